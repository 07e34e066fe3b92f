//! `Store` for `SqlStore`: each method is its aggregate module's function.

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::db::SqlStore;
use super::*;

#[async_trait]
impl Store for SqlStore {
    async fn create_project(
        &self,
        fields: &ProjectFields,
        push_token_hash: Option<&str>,
        credential: Option<&SealedCredential>,
    ) -> Result<ProjectRecord> {
        let new = NewProject {
            fields: fields.clone(),
            push_token_hash: push_token_hash.map(str::to_string),
            credential: credential.cloned(),
            ssh_known_hosts: None,
            node_selector: BTreeMap::new(),
        };
        projects::create(self, &new, None).await
    }

    async fn create_project_with(
        &self,
        new: &NewProject,
        set_up: Option<&SetUp>,
    ) -> Result<ProjectRecord> {
        projects::create(self, new, set_up).await
    }

    async fn change_project(&self, id: i64, change: &ProjectChange) -> Result<ProjectRecord> {
        projects::change(self, id, change).await
    }

    async fn projects_page(&self, after: Option<i64>, limit: i64) -> Result<Vec<ProjectRecord>> {
        projects::page(self, after, limit).await
    }

    async fn project(&self, id: i64) -> Result<ProjectRecord> {
        projects::get(self, id).await
    }

    async fn projects_checked(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Result<ProjectRecord, BrokenProject>>> {
        projects::list_checked(self, after, limit).await
    }

    async fn claim_projects(
        &self,
        claim: &LeaseClaim,
        after: i64,
    ) -> Result<Vec<Result<ProjectRecord, BrokenProject>>> {
        leases::claim(self, claim, after).await
    }

    async fn release_projects(&self, owner: &str, checked_at: Option<i64>) -> Result<()> {
        leases::release(self, owner, checked_at).await
    }

    async fn renew_leases(&self, owner: &str, lease_until: i64) -> Result<u64> {
        leases::renew(self, owner, lease_until).await
    }

    async fn lead(&self, role: &str) -> Result<Option<Leader>> {
        leases::lead(self, role).await
    }

    async fn update_project(&self, id: i64, fields: &ProjectFields) -> Result<ProjectRecord> {
        let change = ProjectChange {
            fields: Some(fields.clone()),
            ..ProjectChange::default()
        };
        projects::change(self, id, &change).await
    }

    async fn delete_project(&self, id: i64) -> Result<()> {
        projects::delete(self, id).await
    }

    async fn credential(&self, project_id: i64) -> Result<Option<SealedCredential>> {
        projects::credential(self, project_id).await
    }

    async fn project_by_push_token_hash(&self, project_id: i64, hash: &str) -> Result<bool> {
        projects::has_push_token_hash(self, project_id, hash).await
    }

    async fn settings(&self) -> Result<Settings> {
        settings::rows::get(self).await
    }

    async fn put_settings(&self, values: &BTreeMap<String, String>) -> Result<Settings> {
        settings::rows::put(self, values).await
    }

    async fn admin_token_count(&self) -> Result<i64> {
        settings::rows::admin_token_count(self).await
    }

    async fn add_admin_token(&self, hash: &str) -> Result<()> {
        settings::rows::add_admin_token(self, hash).await
    }

    async fn admin_token_exists(&self, hash: &str) -> Result<bool> {
        settings::rows::admin_token_exists(self, hash).await
    }

    async fn record_trigger(&self, write: &TriggerWrite) -> Result<Deployment> {
        let d = deployments::record_trigger(self, write).await?;
        self.changed(&d);
        Ok(d)
    }

    async fn set_image_digests(
        &self,
        project_id: i64,
        digests: &BTreeMap<String, String>,
    ) -> Result<()> {
        projects::set_image_digests(self, project_id, digests).await
    }

    async fn deployments(&self, project_id: i64, limit: i64) -> Result<Vec<Deployment>> {
        deployments::list(self, project_id, None, limit).await
    }

    async fn deployments_page(
        &self,
        project_id: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Deployment>> {
        deployments::list(self, project_id, before, limit).await
    }

    async fn deployment(&self, id: i64) -> Result<Deployment> {
        deployments::get(self, id).await
    }

    async fn add_node(
        &self,
        name: &str,
        token_hash: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Node> {
        nodes::add(self, name, token_hash, labels).await
    }

    async fn nodes(&self) -> Result<Vec<Node>> {
        nodes::list(self).await
    }

    async fn observed(&self, online_since: i64) -> Result<Observed> {
        nodes::observed(self, online_since).await
    }

    async fn nodes_page(&self, after: Option<i64>, limit: i64) -> Result<Vec<Node>> {
        nodes::page(self, after, limit).await
    }

    async fn node(&self, id: i64) -> Result<Node> {
        nodes::get(self, id).await
    }

    async fn node_by_token_hash(&self, hash: &str) -> Result<Option<Node>> {
        nodes::by_token_hash(self, hash).await
    }

    async fn delete_node(&self, id: i64, force: bool) -> Result<NodeDeletion> {
        let done = nodes::delete(self, id, force).await?;
        for id in &done.failed_deployments {
            if let Ok(d) = deployments::get(self, *id).await {
                self.changed(&d);
            }
        }
        Ok(done)
    }

    async fn node_holds_project(&self, node_id: i64, project_id: i64) -> Result<bool> {
        nodes::holds_project(self, node_id, project_id).await
    }

    async fn heartbeat(&self, node_id: i64, at: i64) -> Result<()> {
        nodes::heartbeat(&self.pool, node_id, at).await
    }

    async fn claim(&self, node_id: i64) -> Result<Option<Claim>> {
        let claim = claims::claim(self, node_id).await?;
        if let Some(c) = &claim {
            self.changed(&c.deployment);
        }
        Ok(claim)
    }

    async fn report_deploy(
        &self,
        node_id: i64,
        deployment_id: i64,
        report: &DeployReport<'_>,
    ) -> Result<Deployment> {
        let d = claims::report(self, node_id, deployment_id, report).await?;
        self.changed(&d);
        Ok(d)
    }

    async fn cancel_deployment(&self, project_id: i64, id: i64) -> Result<(Deployment, Cancelled)> {
        let done = deployments::cancel(self, project_id, id).await?;
        self.changed(&done.0);
        Ok(done)
    }

    async fn append_log(
        &self,
        node_id: i64,
        deployment_id: i64,
        offset: i64,
        chunk: &str,
    ) -> Result<LogAppend> {
        logs::append(self, node_id, deployment_id, offset, chunk).await
    }

    async fn deployment_log(&self, id: i64, after: i64, limit: usize) -> Result<LogPage> {
        logs::read(self, id, after, limit).await
    }

    async fn fail_deployments_of_offline_nodes(&self, seen_before: i64) -> Result<Vec<Deployment>> {
        let failed = claims::fail_of_offline_nodes(self, seen_before).await?;
        failed.iter().for_each(|d| self.changed(d));
        Ok(failed)
    }

    async fn log_event(
        &self,
        project_id: Option<i64>,
        kind: EventKind,
        message: &str,
    ) -> Result<()> {
        events::insert(&self.pool, project_id, kind, message).await
    }

    async fn events(&self, project_id: Option<i64>, limit: i64) -> Result<Vec<Event>> {
        events::list(self, project_id, None, limit).await
    }

    async fn events_page(
        &self,
        project_id: Option<i64>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<Event>> {
        events::list(self, project_id, before, limit).await
    }

    async fn record_decisions(&self, records: &[DecisionRecord]) -> Result<()> {
        self.record_decisions_impl(records).await
    }

    async fn decisions(&self, query: &DecisionQuery) -> Result<Vec<Decision>> {
        self.decisions_impl(query).await
    }

    async fn prune_decisions(&self, max_rows: u64, older_than: i64) -> Result<Pruned> {
        self.prune_decisions_impl(max_rows, older_than).await
    }

    async fn active_policy(&self) -> Result<Option<ActivePolicy>> {
        self.active_policy_row().await
    }
    async fn stored_policy(&self, sha256: &str) -> Result<Option<StoredPolicy>> {
        self.stored_policy_row(sha256).await
    }
    async fn native_code(&self, sha256: &str, engine_hash: &str) -> Result<Option<NativeCode>> {
        self.native_code_row(sha256, engine_hash).await
    }
    async fn put_native_code(&self, sha256: &str, native: &NativeCode) -> Result<()> {
        self.put_native_code_row(sha256, native).await
    }
    async fn seed_policy(&self, new: &NewPolicy) -> Result<ActivePolicy> {
        self.seed_policy_row(new).await
    }
    async fn switch_policy(&self, new: &NewPolicy) -> Result<ActivePolicy> {
        self.switch_policy_row(new).await
    }
    async fn set_policy_config(&self, sha256: &str, config: &str) -> Result<ActivePolicy> {
        self.set_policy_config_row(sha256, config).await
    }
    async fn rollback_policy(&self) -> Result<Option<ActivePolicy>> {
        self.rollback_policy_row().await
    }

    fn deployment_changes(&self) -> tokio::sync::broadcast::Receiver<DeploymentChange> {
        self.deployment_changes.subscribe()
    }
    fn relay_deployment_change(&self, origin: u64, change: DeploymentChange) {
        if origin != self.origin {
            let _ = self.deployment_changes.send(change);
        }
    }
    async fn project_summaries(
        &self,
        filter: &ProjectFilter,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ProjectSummary>> {
        browse::summaries(self, filter, after.unwrap_or(0), limit).await
    }
    async fn pinned_projects(&self) -> Result<Vec<(i64, i64, String)>> {
        browse::pinned(self).await
    }
    async fn create_web_session(&self, id_hash: &str, session: &WebSession) -> Result<()> {
        sessions::create(self, id_hash, session).await
    }
    async fn web_session(&self, id_hash: &str) -> Result<Option<WebSession>> {
        sessions::get(self, id_hash).await
    }
    async fn delete_web_session(&self, id_hash: &str) -> Result<()> {
        sessions::delete(self, id_hash).await
    }

    async fn set_webhook_secret(&self, project_id: i64, sealed: &str) -> Result<()> {
        webhooks::set_secret(self, project_id, sealed).await
    }

    async fn webhook_secret(&self, project_id: i64) -> Result<Option<String>> {
        webhooks::secret(self, project_id).await
    }

    async fn note_webhook_delivery(
        &self,
        project_id: i64,
        delivery_id: &str,
        expires_at: i64,
    ) -> Result<bool> {
        webhooks::note_delivery(self, project_id, delivery_id, expires_at).await
    }
    async fn add_notification_target(&self, target: &NewTarget) -> Result<NotificationTarget> {
        notifications::add_target(self, target).await
    }

    async fn notification_targets(&self) -> Result<Vec<NotificationTarget>> {
        notifications::targets(self).await
    }

    async fn notification_target(&self, id: i64) -> Result<NotificationTarget> {
        notifications::target(self, id).await
    }

    async fn delete_notification_target(&self, id: i64) -> Result<()> {
        notifications::delete_target(self, id).await
    }

    async fn enqueue_notification(
        &self,
        project_id: Option<i64>,
        event: NotifyEvent,
        detail: &str,
    ) -> Result<u64> {
        notifications::enqueue_now(self, project_id, event, detail).await
    }

    async fn claim_notifications(
        &self,
        now_ms: i64,
        until_ms: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedNotification>> {
        notifications::claim(self, now_ms, until_ms, limit).await
    }

    async fn finish_notification(&self, id: i64, delivery: &Delivery) -> Result<()> {
        notifications::finish(self, id, delivery).await
    }

    async fn notification_deliveries(
        &self,
        target_id: i64,
        limit: i64,
    ) -> Result<Vec<OutboxEntry>> {
        notifications::deliveries(self, target_id, limit).await
    }

    async fn prune_notifications(&self, before: i64) -> Result<u64> {
        notifications::prune(self, before).await
    }

    async fn set_registry_credential(
        &self,
        project_id: i64,
        credential: &SealedRegistryCredential,
    ) -> Result<()> {
        registry_creds::set(self, project_id, credential).await
    }

    async fn delete_registry_credential(&self, project_id: i64, registry: &str) -> Result<bool> {
        registry_creds::delete(self, project_id, registry).await
    }

    async fn registry_credentials(&self, project_id: i64) -> Result<Vec<SealedRegistryCredential>> {
        registry_creds::of_project(self, project_id).await
    }

    async fn all_registry_credentials(&self) -> Result<Vec<(i64, SealedRegistryCredential)>> {
        registry_creds::all(self).await
    }
}

impl SqlStore {
    /// Tells live views of a committed deployment change; nobody listening
    /// is fine.
    fn changed(&self, d: &Deployment) {
        let change = DeploymentChange::from(d);
        let _ = self.deployment_changes.send(change);
        if let Some(tell) = &self.tell_replicas
            && tell.try_send(change).is_err()
        {
            tracing::warn!("too many deployment changes queued for other replicas; one dropped");
        }
    }
}
