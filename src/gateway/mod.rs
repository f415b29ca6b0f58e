//! Protocol gateways (STOMP today; MQTT and AMQP later): codecs that are pure and fuzzable, and,
//! once wired, session state machines that map each protocol onto queues, topics and bindings.
//!
//! STOMP 1.0–1.2 (`stomp/`, on `stomp_listen`) and MQTT 3.1/3.1.1/5.0 (`mqtt/`, on
//! `mqtt_listen`) are served; AMQP is not built yet.

pub mod mqtt;
pub mod ordered;
pub mod stomp;
