//! The cases of the suite, each a function of a [`Broker`](crate::Broker).
