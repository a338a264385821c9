//! Ferry's Redis Streams adapter: a sink (XADD) and a consumer-group subscriber (XREADGROUP, XACK, reclaim)
