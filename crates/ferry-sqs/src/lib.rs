//! Amazon SQS: sink and subscriber for standard and FIFO queues.
