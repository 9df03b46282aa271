//! `CachedStore`: reuses `authenticate` answers for a few seconds so a busy key does not cost a
//! query per request. Only `authenticate` is cached; balances and everything else pass through.
//!
//! The TTL bounds how long a revocation takes to bite on another replica. A revocation made
//! through this wrapper drops its entries at once on this replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::keys::parse_key;
use crate::*;

/// Past this many entries, expired ones are swept; if still full, the cache starts over (keeps
/// memory bounded when someone sprays random well-formed keys).
const MAX_ENTRIES: usize = 10_000;

pub struct CachedStore {
    inner: Arc<dyn Store>,
    ttl: Duration,
    /// sha256(key) -> (when looked up, answer). Hashes, not keys, so no secret sits in memory.
    entries: Mutex<HashMap<String, (Instant, Option<KeyInfo>)>>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn Store>, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<KeyInfo>)>> {
        // A panic while holding this lock cannot leave the map inconsistent; keep using it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget_key_id(&self, key_id: &str) {
        self.entries()
            .retain(|_, (_, info)| info.as_ref().is_none_or(|i| i.id != key_id));
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn authenticate(&self, raw_key: &str) -> Result<Option<KeyInfo>> {
        let parsed = parse_key(raw_key)?;
        let now = Instant::now();
        if let Some((at, info)) = self.entries().get(&parsed.hash) {
            if now.duration_since(*at) < self.ttl {
                return Ok(info.clone());
            }
        }
        let info = self.inner.authenticate(raw_key).await?;
        let mut entries = self.entries();
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| now.duration_since(*at) < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(parsed.hash, (now, info.clone()));
        Ok(info)
    }

    async fn revoke(&self, key_id: &str) -> Result<()> {
        self.inner.revoke(key_id).await?;
        self.forget_key_id(key_id);
        Ok(())
    }

    async fn create_key(&self, name: &str, credits: i64) -> Result<NewKey> {
        self.inner.create_key(name, credits).await
    }
    async fn list_keys(&self) -> Result<Vec<KeyInfo>> {
        self.inner.list_keys().await
    }
    async fn topup(&self, key_id: &str, credits: i64) -> Result<i64> {
        self.inner.topup(key_id, credits).await
    }
    async fn balance(&self, key_id: &str) -> Result<i64> {
        self.inner.balance(key_id).await
    }
    async fn debit(&self, req: &DebitRequest) -> Result<Debit> {
        self.inner.debit(req).await
    }
    async fn settle(&self, debit_id: &str, status: u16, latency_ms: f64) -> Result<()> {
        self.inner.settle(debit_id, status, latency_ms).await
    }
    async fn refund(&self, debit_id: &str, status: u16, latency_ms: f64) -> Result<i64> {
        self.inner.refund(debit_id, status, latency_ms).await
    }
    async fn account(&self, key_id: &str, recent: usize) -> Result<Account> {
        self.inner.account(key_id, recent).await
    }
    async fn reap_stale(&self, older_than: Duration) -> Result<u64> {
        self.inner.reap_stale(older_than).await
    }
    async fn idempotency_claim(
        &self,
        key_id: &str,
        idempotency_key: &str,
        request_hash: &str,
    ) -> Result<IdempotencyClaim> {
        self.inner
            .idempotency_claim(key_id, idempotency_key, request_hash)
            .await
    }
    async fn idempotency_complete(
        &self,
        key_id: &str,
        idempotency_key: &str,
        status: u16,
        body: &str,
    ) -> Result<()> {
        self.inner
            .idempotency_complete(key_id, idempotency_key, status, body)
            .await
    }
    async fn idempotency_known(&self, key_id: &str, idempotency_key: &str) -> Result<bool> {
        self.inner.idempotency_known(key_id, idempotency_key).await
    }
    async fn idempotency_abort(&self, key_id: &str, idempotency_key: &str) -> Result<()> {
        self.inner.idempotency_abort(key_id, idempotency_key).await
    }
    async fn prune_idempotency(&self, older_than: Duration) -> Result<u64> {
        self.inner.prune_idempotency(older_than).await
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    async fn check_writes(&self) -> Result<()> {
        self.inner.check_writes().await
    }
    async fn ledger_totals(&self, key_id: &str) -> Result<LedgerTotals> {
        self.inner.ledger_totals(key_id).await
    }
    async fn reservation(&self, debit_id: &str) -> Result<Reservation> {
        self.inner.reservation(debit_id).await
    }
    async fn close(&self) {
        self.entries().clear();
        self.inner.close().await;
    }
    async fn create_classifier(
        &self,
        key_id: &str,
        spec: &ClassifierSpec,
        max_per_key: u32,
    ) -> Result<Classifier> {
        self.inner
            .create_classifier(key_id, spec, max_per_key)
            .await
    }
    async fn list_classifiers(&self, key_id: &str) -> Result<Vec<Classifier>> {
        self.inner.list_classifiers(key_id).await
    }
    async fn get_classifier(&self, key_id: &str, name: &str) -> Result<Option<Classifier>> {
        self.inner.get_classifier(key_id, name).await
    }
    async fn replace_classifier(&self, key_id: &str, spec: &ClassifierSpec) -> Result<Classifier> {
        self.inner.replace_classifier(key_id, spec).await
    }
    async fn delete_classifier(&self, key_id: &str, name: &str) -> Result<bool> {
        self.inner.delete_classifier(key_id, name).await
    }
    async fn count_classifiers(&self, key_id: &str) -> Result<u64> {
        self.inner.count_classifiers(key_id).await
    }
}
