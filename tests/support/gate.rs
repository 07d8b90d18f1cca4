//! A TCP gate in front of a broker, for brokers whose process cannot be restarted with its data
//! here (tansu and moto keep everything in memory): while open it forwards every connection;
//! [`Gate::close`] cuts every connection through it and resets new ones until [`Gate::open`] —
//! what a client sees of a broker that went away and came back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Gate {
    pub port: u16,
    open: Arc<AtomicBool>,
    /// Bumped by every `close`: connections opened before it end.
    cuts: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// A private tansu whose clients all go through a gate (it advertises the gate's port),
    /// with `topic` created.
    pub async fn kafka(topic: &str, partitions: i32) -> (crate::kafka::KafkaBroker, Self) {
        let port = crate::free_port();
        let kafka = crate::kafka::KafkaBroker::start_advertising(Some(port));
        let gate = Self::start(port, kafka.port).await;
        kafka.create_topic(topic, partitions).await;
        (kafka, gate)
    }

    /// Listens on `port` (0: any) and forwards to 127.0.0.1:`upstream`.
    pub async fn start(port: u16, upstream: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let (o, c) = (open.clone(), cuts.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                if !o.load(Ordering::SeqCst) {
                    // Closed: a reset, as from a port nobody listens on.
                    let _ = client.set_zero_linger();
                    drop(client);
                    continue;
                }
                let mut cut = c.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let mut client = client;
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {
                            let _ = client.set_zero_linger();
                        }
                    }
                });
            }
        });
        Self { port, open, cuts, accept }
    }

    /// Cuts every connection and refuses new ones.
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.accept.abort();
        self.close();
    }
}
