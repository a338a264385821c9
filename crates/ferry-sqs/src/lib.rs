//! Ferry's Amazon SQS adapter: a sink for standard and FIFO queues and a subscriber with visibility timeouts
