-- Replicas sharing one database share the git poll: a tick claims the
-- projects due for a check (checked_at at least one interval ago, or never)
-- that no other replica holds a lease on, stamps checked_at and takes a
-- lease (lease_owner, a random id per process, until lease_until, at most
-- one interval ahead). The lease is released when the tick ends; one held
-- by a replica that died expires, and another claims the project.
ALTER TABLE projects ADD COLUMN checked_at BIGINT;
ALTER TABLE projects ADD COLUMN lease_owner TEXT;
ALTER TABLE projects ADD COLUMN lease_until BIGINT;
CREATE INDEX projects_lease_owner ON projects (lease_owner);
