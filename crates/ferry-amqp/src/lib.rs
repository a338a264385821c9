//! RabbitMQ (AMQP 0.9.1): sink with publisher confirms and subscriber with manual acks.
