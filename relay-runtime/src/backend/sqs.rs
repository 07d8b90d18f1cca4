//! AWS SQS: the client settings shared by the sink and the source, and each side's own.

use schemars::JsonSchema;
use serde::Deserialize;

use super::fields::{Int, Secret, TemplateText, Text};
#[cfg(feature = "sqs")]
use super::BuildError;
#[cfg(feature = "sqs")]
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};

/// The queue and how to reach it, shared by the SQS sink and source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct SqsClient {
    /// The queue URL; one ending in `.fifo` is a FIFO queue.
    pub queue_url: Text,
    /// AWS region (else `AWS_REGION` / the profile).
    pub region: Option<Text>,
    /// An SQS-compatible endpoint.
    #[serde(alias = "endpoint")]
    #[schemars(extend("x-aliases" = ["endpoint"]))]
    pub endpoint_url: Option<Text>,
    /// Access key id (with `secret_access_key`); else the AWS default chain.
    pub access_key_id: Option<Secret>,
    /// Secret access key.
    pub secret_access_key: Option<Secret>,
    /// Session token of temporary credentials.
    pub session_token: Option<Secret>,
}

/// The SQS sink.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqsSinkConfig {
    #[serde(flatten)]
    pub client: SqsClient,
    /// FIFO message group id template (default `{stream_table}`).
    #[serde(alias = "message_group_id_template")]
    #[schemars(extend("x-aliases" = ["message_group_id_template"]))]
    pub message_group_id: Option<TemplateText>,
    /// `SendMessageBatch` calls in flight (default 10; FIFO queues: 1).
    #[serde(alias = "max_inflight")]
    #[schemars(extend("x-aliases" = ["max_inflight"]))]
    pub max_in_flight: Option<Int<1, 100>>,
}

/// The SQS source.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqsSourceConfig {
    #[serde(flatten)]
    pub client: SqsClient,
    /// Seconds a received batch stays invisible while it is written (default 30).
    pub visibility_timeout: Option<Int<1, 43_200>>,
}

#[cfg(feature = "sqs")]
impl SqsClient {
    /// The client and queue URL: `region`, `endpoint_url`, `access_key_id` +
    /// `secret_access_key` (+ `session_token`), else the AWS default chain.
    pub async fn client(&self) -> Result<(aws_sdk_sqs::Client, String), BuildError> {
        use aws_sdk_sqs::config::{Credentials, Region};
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.0.clone()));
        }
        if let Some(endpoint) = &self.endpoint_url {
            loader = loader.endpoint_url(endpoint.as_str());
        }
        match (&self.access_key_id, &self.secret_access_key) {
            (Some(id), Some(secret)) => {
                let token = self.session_token.as_ref().map(|t| t.expose().to_owned());
                loader = loader.credentials_provider(Credentials::new(
                    id.expose(),
                    secret.expose(),
                    token,
                    None,
                    "pgtrickle-relay config",
                ));
            }
            (None, None) => {} // the AWS default chain: environment, profile, web identity, instance role
            _ => {
                return Err(BuildError::option(
                    "sqs",
                    "access_key_id",
                    "access_key_id and secret_access_key go together",
                ))
            }
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(BuildError::option(
                "sqs",
                "region",
                "no AWS region: set \"region\" (or AWS_REGION for the relay)",
            ));
        }
        Ok((aws_sdk_sqs::Client::new(&config), self.queue_url.0.clone()))
    }
}

#[cfg(feature = "sqs")]
/// Checks that the queue exists (and that the credentials may see it).
pub async fn check_queue(client: &aws_sdk_sqs::Client, queue_url: &str) -> Result<(), BuildError> {
    let r = client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            let code = e.code().unwrap_or_default().to_owned();
            let text = DisplayErrorContext(&e).to_string();
            if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") {
                Err(BuildError::open("sqs", format!("SQS queue {queue_url} does not exist; create it")))
            } else if e.as_service_error().is_some() {
                Err(BuildError::open("sqs", format!("cannot use SQS queue {queue_url}: {text}")))
            } else {
                Err(BuildError::unreachable("sqs", format!("cannot reach SQS for {queue_url}: {text}")))
            }
        }
    }
}
