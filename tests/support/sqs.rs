//! A private SQS-compatible server per test (moto_server on a free port) and a client for it.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

use crate::free_port;

pub struct SqsServer {
    child: Child,
    pub port: u16,
}

/// One message as a consumer sees it.
#[derive(Debug, Clone)]
pub struct Received {
    pub body: serde_json::Value,
    pub attributes: BTreeMap<String, String>,
    pub group_id: Option<String>,
}

impl SqsServer {
    pub fn start() -> Self {
        Self::start_with_bin(&std::env::var("MOTO_SERVER_BIN").unwrap_or_else(|_| "moto_server".to_owned()))
    }

    pub fn start_with_bin(bin: &str) -> Self {
        let bin = bin.to_owned();
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} ({e}): scripts/test installs it (pip install moto[server])"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(crate::http_get(&format!("127.0.0.1:{port}"), "/moto-api/"), Ok((200, _))) {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(self.endpoint())
            .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    /// Creates a queue (FIFO when the name ends in `.fifo`) and returns its URL.
    pub async fn create_queue(&self, name: &str) -> String {
        let mut req = self.client().create_queue().queue_name(name);
        if name.ends_with(".fifo") {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
        }
        req.send().await.unwrap().queue_url().unwrap().to_owned()
    }

    /// How many messages the queue holds, visible or not (SQS's approximate count; moto's is
    /// exact).
    pub async fn approximate_count(&self, queue_url: &str) -> usize {
        let r = self
            .client()
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attrs = r.attributes().cloned().unwrap_or_default();
        [QueueAttributeName::ApproximateNumberOfMessages, QueueAttributeName::ApproximateNumberOfMessagesNotVisible]
            .iter()
            .filter_map(|k| attrs.get(k).and_then(|v| v.parse::<usize>().ok()))
            .sum()
    }

    /// Receives and deletes every message now in the queue, in the order SQS hands them out.
    pub async fn drain(&self, queue_url: &str) -> Vec<Received> {
        self.receive(queue_url, true).await
    }

    /// Receives every visible message without deleting it: each stays invisible for a minute
    /// (so a second call sees only newer ones) and, unlike a deleted one, still counts for
    /// moto's FIFO deduplication (real SQS remembers deleted ones too).
    pub async fn take_invisible(&self, queue_url: &str) -> Vec<Received> {
        self.receive(queue_url, false).await
    }

    /// The body of one message of the queue (left in place, invisible for a minute).
    pub async fn drain_one(&self, queue_url: &str) -> Option<serde_json::Value> {
        let r = self
            .client()
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(1)
            .visibility_timeout(60)
            .send()
            .await
            .unwrap();
        r.messages().first().map(|m| serde_json::from_str(m.body().unwrap_or_default()).unwrap())
    }

    async fn receive(&self, queue_url: &str, delete: bool) -> Vec<Received> {
        let client = self.client();
        let mut out = Vec::new();
        let mut empty_polls = 0;
        while empty_polls < 2 {
            let r = client
                .receive_message()
                .queue_url(queue_url)
                .max_number_of_messages(10)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .visibility_timeout(60)
                .send()
                .await
                .unwrap();
            let msgs = r.messages();
            if msgs.is_empty() {
                empty_polls += 1;
                continue;
            }
            empty_polls = 0;
            for m in msgs {
                let attributes = m
                    .message_attributes()
                    .map(|a| {
                        a.iter().map(|(k, v)| (k.clone(), v.string_value().unwrap_or_default().to_owned())).collect()
                    })
                    .unwrap_or_default();
                let group_id = m.attributes().and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId)).cloned();
                out.push(Received {
                    body: serde_json::from_str(m.body().unwrap_or_default()).unwrap(),
                    attributes,
                    group_id,
                });
                if delete {
                    let handle = m.receipt_handle().unwrap();
                    client.delete_message().queue_url(queue_url).receipt_handle(handle).send().await.unwrap();
                }
            }
        }
        out
    }
}

impl Drop for SqsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
