//! Integration tests of weir-nats: every test starts its own real
//! nats-server (`weir_testkit::NatsServer`), bounds its own time with
//! [`nats::util::within`], and checks exact record sets on the broker.

mod nats;
