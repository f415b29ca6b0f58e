//! Protocol gateways (STOMP today; MQTT and AMQP later): codecs that are pure and fuzzable, and,
//! once wired, session state machines that map each protocol onto queues, topics and bindings.
//!
//! Status: the STOMP 1.0/1.1/1.2 frame codec is built and tested; the listener and session
//! that would serve it from the shard loops are not (issue #6), so nothing here runs in the
//! server yet.

pub mod stomp;
