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
        deployments::record_trigger(self, write).await
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
        nodes::delete(self, id, force).await
    }

    async fn node_holds_project(&self, node_id: i64, project_id: i64) -> Result<bool> {
        nodes::holds_project(self, node_id, project_id).await
    }

    async fn heartbeat(&self, node_id: i64, at: i64) -> Result<()> {
        nodes::heartbeat(&self.pool, node_id, at).await
    }

    async fn claim(&self, node_id: i64) -> Result<Option<Claim>> {
        claims::claim(self, node_id).await
    }

    async fn report(
        &self,
        node_id: i64,
        deployment_id: i64,
        status: DeployStatus,
        log_tail: Option<&str>,
        error: Option<&str>,
    ) -> Result<Deployment> {
        claims::report(self, node_id, deployment_id, status, log_tail, error).await
    }

    async fn fail_deployments_of_offline_nodes(&self, seen_before: i64) -> Result<Vec<Deployment>> {
        claims::fail_of_offline_nodes(self, seen_before).await
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
}
