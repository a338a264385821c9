//! Ferry's RabbitMQ (AMQP 0.9.1) adapter: a sink with publisher confirms and a subscriber with manual acks
