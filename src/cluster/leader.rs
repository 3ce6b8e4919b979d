//! Leader election through an etcd lease (issue 11), as kube-controller-manager and
//! kube-scheduler elect theirs: the node that puts `<prefix>/leader/controllers` (its name, on
//! a lease of [`TTL`]) while the key is absent leads and keeps the lease alive; the others try
//! again every second and take over once the lease expired. Fencing: a leader whose renewal
//! fails, or who finds the key no longer names it, steps down at once, and every write it makes
//! to etcd as leader is a transaction that compares the key with its name (see [`fence`]).

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::overlay::etcd::{Client, Compare, EtcdError, Op};

/// The leader key's lease: a leader that dies is replaced after this long.
pub const TTL: Duration = Duration::from_secs(15);

/// How often a candidate tries to take the key.
const RETRY: Duration = Duration::from_secs(1);
/// How long a stopping leader waits for etcd to take its lease back.
const REVOKE_WAIT: Duration = Duration::from_secs(2);

/// The leader key under `prefix`.
pub fn key(prefix: &str) -> String {
    format!("{}/leader/controllers", prefix.trim_end_matches('/'))
}

/// The comparison that makes a write the leader's only: the key still names `node`.
pub fn fence(prefix: &str, node: &str) -> Compare {
    Compare::Value(key(prefix), node.as_bytes().to_vec())
}

/// Campaigns for the controllers' leadership and reports it on a watch channel.
pub struct Elector {
    client: Client,
    key: String,
    node: String,
    ttl: Duration,
}

impl Elector {
    /// An elector for `node` under `prefix`, with the leader key's lease `ttl`.
    pub fn new(client: Client, prefix: &str, node: &str, ttl: Duration) -> Self {
        Elector {
            client,
            key: key(prefix),
            node: node.to_string(),
            ttl,
        }
    }

    /// Runs until `shutdown`, setting `leader` while this node leads; a leader that stops
    /// revokes its lease so that another takes over without waiting for the TTL.
    pub async fn run(
        self,
        leader: watch::Sender<bool>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let won = tokio::select! {
                r = self.campaign() => r,
                _ = &mut shutdown => break,
            };
            match won {
                Ok(Some(lease)) => {
                    info!(node = %self.node, "leader election: this node leads the controllers");
                    leader.send_replace(true);
                    let stop = tokio::select! {
                        why = self.hold(lease) => {
                            warn!(node = %self.node, reason = %why, "leader election: lost the lead; the controllers stop");
                            false
                        }
                        _ = &mut shutdown => true,
                    };
                    leader.send_replace(false);
                    // Handing the lease back lets another node lead at once; an etcd out of
                    // reach must not hold up the shutdown (the lease then runs out by itself).
                    let _ = tokio::time::timeout(REVOKE_WAIT, self.client.revoke(lease)).await;
                    if stop {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => debug!(error = %e, "leader election: etcd unavailable"),
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => {}
                _ = &mut shutdown => break,
            }
        }
    }

    /// One attempt: the lease of the new leadership, or `None` when another node leads.
    async fn campaign(&self) -> Result<Option<i64>, EtcdError> {
        let lease = self.client.grant(self.ttl.as_secs().max(1) as i64).await?;
        let put = [Op::Put(
            self.key.clone(),
            self.node.as_bytes().to_vec(),
            lease,
        )];
        // Absent, or still ours from before a restart (its old lease not expired yet).
        let won = self
            .client
            .txn(&[Compare::Absent(self.key.clone())], &put)
            .await?
            || self
                .client
                .txn(
                    &[Compare::Value(
                        self.key.clone(),
                        self.node.as_bytes().to_vec(),
                    )],
                    &put,
                )
                .await?;
        if won {
            return Ok(Some(lease));
        }
        let _ = self.client.revoke(lease).await;
        Ok(None)
    }

    /// Keeps the lease alive while the key names this node; returns why the lead was lost.
    async fn hold(&self, lease: i64) -> String {
        let mut tick = tokio::time::interval(self.ttl / 5);
        loop {
            tick.tick().await;
            if let Err(e) = self.client.keepalive(lease).await {
                return format!("renewing the lease: {e}");
            }
            match self.client.range(&self.key, false).await {
                Ok((kvs, _)) => {
                    if !kvs.iter().any(|kv| kv.value == self.node.as_bytes()) {
                        return "the leader key names another node".into();
                    }
                }
                Err(e) => return format!("reading the leader key: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::etcd::tests::Etcd;

    async fn until(rx: &mut watch::Receiver<bool>, want: bool) {
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|v| *v == want))
            .await
            .expect("leadership within 20 s")
            .expect("elector running");
    }

    #[tokio::test]
    async fn one_leader_and_a_takeover_when_it_stops() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let (a_tx, mut a) = watch::channel(false);
        let (b_tx, mut b) = watch::channel(false);
        let (stop_a, stop_a_rx) = tokio::sync::oneshot::channel::<()>();
        let ea = Elector::new(etcd.client(), "/t", "a", Duration::from_secs(3));
        let task_a = tokio::spawn(ea.run(a_tx, async move {
            let _ = stop_a_rx.await;
        }));
        until(&mut a, true).await;
        let eb = Elector::new(etcd.client(), "/t", "b", Duration::from_secs(3));
        let (stop_b, stop_b_rx) = tokio::sync::oneshot::channel::<()>();
        let task_b = tokio::spawn(eb.run(b_tx, async move {
            let _ = stop_b_rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!*b.borrow(), "b must not lead while a does");
        let c = etcd.client();
        // The fence holds for a only.
        assert!(c.txn(&[fence("/t", "a")], &[]).await.unwrap());
        assert!(!c.txn(&[fence("/t", "b")], &[]).await.unwrap());
        let _ = stop_a.send(());
        task_a.await.unwrap();
        until(&mut b, true).await;
        assert!(c.txn(&[fence("/t", "b")], &[]).await.unwrap());
        let _ = stop_b.send(());
        task_b.await.unwrap();
    }

    #[tokio::test]
    async fn a_leader_whose_key_is_taken_steps_down() {
        let Some(etcd) = Etcd::start().await else {
            return;
        };
        let (tx, mut rx) = watch::channel(false);
        let e = Elector::new(etcd.client(), "/t", "a", Duration::from_secs(3));
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(e.run(tx, async move {
            let _ = stop_rx.await;
        }));
        until(&mut rx, true).await;
        etcd.client().put(&key("/t"), b"intruder", 0).await.unwrap();
        until(&mut rx, false).await;
        let _ = stop.send(());
        task.await.unwrap();
    }
}
