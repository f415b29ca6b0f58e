//! Protocol gateways (STOMP today; MQTT and AMQP later): codecs that are pure and fuzzable, and,
//! once wired, session state machines that map each protocol onto queues, topics and bindings.
//!
//! STOMP 1.0–1.2 is served (`stomp/serve.rs`, on the `stomp_listen` address); MQTT and AMQP
//! are not built yet.

pub mod mqtt;
pub mod stomp;
