//! rumqttc-check HOST PORT: a few interop checks of an MQTT broker with rumqttc, the Rust MQTT
//! client, for MQTT 3.1.1 (`rumqttc`) and MQTT 5.0 (`rumqttc::v5`):
//!
//! - connect with a clean session: CONNACK success, session present = 0
//! - QoS 1 and QoS 2 round trips between two connections (PUBACK / PUBCOMP to the publisher,
//!   the message to the subscriber with the QoS it was published and subscribed with)
//! - a retained message is delivered with the retain flag to a later subscriber (then cleared)
//! - 5.0 only: user properties pass from the publisher to the subscriber
//!
//! Prints `ok <check>` per check; exits 1 with `FAIL <check>: <why>` at the first failure.
//! Every wait is bounded (RUMQTTC_CHECK_TIMEOUT seconds, default 5).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Res<T> = Result<T, String>;

fn wait_bound() -> Duration {
    let secs = std::env::var("RUMQTTC_CHECK_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(5.0);
    Duration::from_secs_f64(secs)
}

/// A name nobody else uses: the suite reruns against the same broker.
fn unique(tag: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{tag}-{}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

mod v311 {
    use super::{unique, wait_bound, Res};
    use rumqttc::{
        AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS,
        SubscribeReasonCode,
    };
    use std::time::Duration;

    pub struct Conn {
        pub client: AsyncClient,
        pub events: EventLoop,
    }

    /// Polls the event loop until `f` picks an incoming packet; bounded.
    pub async fn until<T>(
        c: &mut Conn,
        what: &str,
        mut f: impl FnMut(&Packet) -> Option<T>,
    ) -> Res<T> {
        let fut = async {
            loop {
                match c.events.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if let Some(t) = f(&p) {
                            return Ok(t);
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        return Err(format!("connection error while waiting for {what}: {e}"))
                    }
                }
            }
        };
        tokio::time::timeout(wait_bound(), fut)
            .await
            .map_err(|_| format!("timed out after {:?} waiting for {what}", wait_bound()))?
    }

    pub async fn connect(host: &str, port: u16, tag: &str) -> Res<Conn> {
        let mut opts = MqttOptions::new(unique(tag), host, port);
        opts.set_keep_alive(Duration::from_secs(10)).set_clean_session(true);
        let (client, events) = AsyncClient::new(opts, 16);
        let mut c = Conn { client, events };
        let ack = until(&mut c, "CONNACK", |p| match p {
            Packet::ConnAck(a) => Some(a.clone()),
            _ => None,
        })
        .await?;
        ensure!(ack.code == ConnectReturnCode::Success, "CONNACK code {:?}", ack.code);
        ensure!(!ack.session_present, "session present = 1 on a clean session");
        Ok(c)
    }

    pub async fn close(mut c: Conn) {
        let _ = c.client.disconnect().await;
        // Flush the DISCONNECT; the loop ends with an error once the broker closes.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while c.events.poll().await.is_ok() {}
        })
        .await;
    }

    async fn subscribe(c: &mut Conn, topic: &str, qos: QoS) -> Res<()> {
        c.client.subscribe(topic, qos).await.map_err(|e| e.to_string())?;
        let codes = until(c, "SUBACK", |p| match p {
            Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await?;
        ensure!(
            codes == vec![SubscribeReasonCode::Success(qos)],
            "SUBACK {codes:?}, wanted granted {qos:?}"
        );
        Ok(())
    }

    pub async fn round_trip(host: &str, port: u16, qos: QoS) -> Res<()> {
        let topic = format!("rumqttc-check/{}", unique("rt"));
        let mut sub = connect(host, port, "sub").await?;
        subscribe(&mut sub, &topic, qos).await?;
        let mut publ = connect(host, port, "pub").await?;
        let payload = format!("hello {qos:?}");
        publ.client
            .publish(&topic, qos, false, payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        // The publisher's flow ends with PUBACK (QoS 1) or PUBCOMP (QoS 2).
        until(&mut publ, "the publisher's PUBACK/PUBCOMP", |p| match (qos, p) {
            (QoS::AtLeastOnce, Packet::PubAck(_)) | (QoS::ExactlyOnce, Packet::PubComp(_)) => {
                Some(())
            }
            _ => None,
        })
        .await?;
        let got = until(&mut sub, "the PUBLISH to the subscriber", |p| match p {
            Packet::Publish(m) => Some(m.clone()),
            _ => None,
        })
        .await?;
        ensure!(got.topic == topic, "topic {:?}, wanted {topic:?}", got.topic);
        ensure!(got.payload[..] == *payload.as_bytes(), "payload {:?}", got.payload);
        ensure!(got.qos == qos, "delivered with {:?}, wanted {qos:?}", got.qos);
        ensure!(!got.retain, "retain flag set on a live delivery");
        // For QoS 2 the subscriber's PUBREC/PUBREL/PUBCOMP exchange must complete too.
        if qos == QoS::ExactlyOnce {
            until(&mut sub, "PUBREL to the subscriber", |p| {
                matches!(p, Packet::PubRel(_)).then_some(())
            })
            .await?;
        }
        close(publ).await;
        close(sub).await;
        Ok(())
    }

    pub async fn retained(host: &str, port: u16) -> Res<()> {
        let topic = format!("rumqttc-check/{}", unique("ret"));
        let mut publ = connect(host, port, "pub").await?;
        publ.client
            .publish(&topic, QoS::AtLeastOnce, true, "kept")
            .await
            .map_err(|e| e.to_string())?;
        until(&mut publ, "PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(())).await?;
        let mut sub = connect(host, port, "sub").await?;
        subscribe(&mut sub, &topic, QoS::AtLeastOnce).await?;
        let got = until(&mut sub, "the retained PUBLISH", |p| match p {
            Packet::Publish(m) => Some(m.clone()),
            _ => None,
        })
        .await?;
        ensure!(got.retain, "retain flag not set on a retained message sent on subscribe");
        ensure!(&got.payload[..] == b"kept", "payload {:?}", got.payload);
        ensure!(got.qos == QoS::AtLeastOnce, "qos {:?}", got.qos);
        // Clear it (empty retained payload) so the broker keeps nothing from this run.
        publ.client
            .publish(&topic, QoS::AtLeastOnce, true, Vec::<u8>::new())
            .await
            .map_err(|e| e.to_string())?;
        until(&mut publ, "PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(())).await?;
        close(publ).await;
        close(sub).await;
        Ok(())
    }
}

mod v5 {
    use super::{unique, wait_bound, Res};
    use rumqttc::v5::mqttbytes::v5::{
        ConnectReturnCode, Packet, PublishProperties, SubscribeReasonCode,
    };
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
    use std::time::Duration;

    pub struct Conn {
        pub client: AsyncClient,
        pub events: EventLoop,
    }

    pub async fn until<T>(
        c: &mut Conn,
        what: &str,
        mut f: impl FnMut(&Packet) -> Option<T>,
    ) -> Res<T> {
        let fut = async {
            loop {
                match c.events.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if let Some(t) = f(&p) {
                            return Ok(t);
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        return Err(format!("connection error while waiting for {what}: {e}"))
                    }
                }
            }
        };
        tokio::time::timeout(wait_bound(), fut)
            .await
            .map_err(|_| format!("timed out after {:?} waiting for {what}", wait_bound()))?
    }

    pub async fn connect(host: &str, port: u16, tag: &str) -> Res<Conn> {
        let mut opts = MqttOptions::new(unique(tag), host, port);
        opts.set_keep_alive(Duration::from_secs(10)).set_clean_start(true);
        let (client, events) = AsyncClient::new(opts, 16);
        let mut c = Conn { client, events };
        let ack = until(&mut c, "CONNACK", |p| match p {
            Packet::ConnAck(a) => Some(a.clone()),
            _ => None,
        })
        .await?;
        ensure!(ack.code == ConnectReturnCode::Success, "CONNACK reason {:?}", ack.code);
        ensure!(!ack.session_present, "session present = 1 on a clean start");
        Ok(c)
    }

    pub async fn close(mut c: Conn) {
        let _ = c.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while c.events.poll().await.is_ok() {}
        })
        .await;
    }

    async fn subscribe(c: &mut Conn, topic: &str, qos: QoS) -> Res<()> {
        c.client.subscribe(topic, qos).await.map_err(|e| e.to_string())?;
        let codes = until(c, "SUBACK", |p| match p {
            Packet::SubAck(s) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await?;
        ensure!(
            codes == vec![SubscribeReasonCode::Success(qos)],
            "SUBACK {codes:?}, wanted granted {qos:?}"
        );
        Ok(())
    }

    pub async fn round_trip(host: &str, port: u16, qos: QoS, props: bool) -> Res<()> {
        let topic = format!("rumqttc-check/{}", unique("rt5"));
        let mut sub = connect(host, port, "sub5").await?;
        subscribe(&mut sub, &topic, qos).await?;
        let mut publ = connect(host, port, "pub5").await?;
        let payload = format!("hello v5 {qos:?}");
        let user = vec![("origin".to_string(), "rumqttc".to_string()), ("k".into(), "v".into())];
        if props {
            let p = PublishProperties { user_properties: user.clone(), ..Default::default() };
            publ.client.publish_with_properties(&topic, qos, false, payload.clone(), p).await
        } else {
            publ.client.publish(&topic, qos, false, payload.clone()).await
        }
        .map_err(|e| e.to_string())?;
        until(&mut publ, "the publisher's PUBACK/PUBCOMP", |p| match (qos, p) {
            (QoS::AtLeastOnce, Packet::PubAck(_)) | (QoS::ExactlyOnce, Packet::PubComp(_)) => {
                Some(())
            }
            _ => None,
        })
        .await?;
        let got = until(&mut sub, "the PUBLISH to the subscriber", |p| match p {
            Packet::Publish(m) => Some(m.clone()),
            _ => None,
        })
        .await?;
        ensure!(got.topic[..] == *topic.as_bytes(), "topic {:?}, wanted {topic:?}", got.topic);
        ensure!(got.payload[..] == *payload.as_bytes(), "payload {:?}", got.payload);
        ensure!(got.qos == qos, "delivered with {:?}, wanted {qos:?}", got.qos);
        ensure!(!got.retain, "retain flag set on a live delivery");
        if props {
            let have = got.properties.map(|p| p.user_properties).unwrap_or_default();
            ensure!(have == user, "user properties {have:?}, wanted {user:?} (in order)");
        }
        if qos == QoS::ExactlyOnce {
            until(&mut sub, "PUBREL to the subscriber", |p| {
                matches!(p, Packet::PubRel(_)).then_some(())
            })
            .await?;
        }
        close(publ).await;
        close(sub).await;
        Ok(())
    }

    pub async fn retained(host: &str, port: u16) -> Res<()> {
        let topic = format!("rumqttc-check/{}", unique("ret5"));
        let mut publ = connect(host, port, "pub5").await?;
        publ.client
            .publish(&topic, QoS::AtLeastOnce, true, "kept5")
            .await
            .map_err(|e| e.to_string())?;
        until(&mut publ, "PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(())).await?;
        let mut sub = connect(host, port, "sub5").await?;
        subscribe(&mut sub, &topic, QoS::AtLeastOnce).await?;
        let got = until(&mut sub, "the retained PUBLISH", |p| match p {
            Packet::Publish(m) => Some(m.clone()),
            _ => None,
        })
        .await?;
        ensure!(got.retain, "retain flag not set on a retained message sent on subscribe");
        ensure!(&got.payload[..] == b"kept5", "payload {:?}", got.payload);
        publ.client
            .publish(&topic, QoS::AtLeastOnce, true, Vec::<u8>::new())
            .await
            .map_err(|e| e.to_string())?;
        until(&mut publ, "PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(())).await?;
        close(publ).await;
        close(sub).await;
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: {} HOST PORT", args[0]);
        return ExitCode::from(2);
    }
    let host = args[1].as_str();
    let Ok(port) = args[2].parse::<u16>() else {
        eprintln!("rumqttc-check: PORT must be a number, not {:?}", args[2]);
        return ExitCode::from(2);
    };

    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::QoS as Q4;
    let mut n = 0;
    macro_rules! check {
        ($name:expr, $fut:expr) => {
            match $fut.await {
                Ok(()) => {
                    n += 1;
                    println!("ok {}", $name);
                }
                Err(e) => {
                    println!("FAIL {}: {e}", $name);
                    eprintln!("rumqttc-check: FAIL {}: {e}", $name);
                    return ExitCode::FAILURE;
                }
            }
        };
    }
    check!("v3.1.1 connect", async {
        v311::close(v311::connect(host, port, "conn").await?).await;
        Ok::<(), String>(())
    });
    check!("v3.1.1 qos1 round trip", v311::round_trip(host, port, Q4::AtLeastOnce));
    check!("v3.1.1 qos2 round trip", v311::round_trip(host, port, Q4::ExactlyOnce));
    check!("v3.1.1 retained on subscribe", v311::retained(host, port));
    check!("v5 connect", async {
        v5::close(v5::connect(host, port, "conn5").await?).await;
        Ok::<(), String>(())
    });
    check!("v5 qos1 round trip", v5::round_trip(host, port, Q5::AtLeastOnce, false));
    check!("v5 qos2 round trip", v5::round_trip(host, port, Q5::ExactlyOnce, false));
    check!("v5 user properties", v5::round_trip(host, port, Q5::AtLeastOnce, true));
    check!("v5 retained on subscribe", v5::retained(host, port));
    println!("rumqttc-check: {n} checks passed against {host}:{port}");
    ExitCode::SUCCESS
}
