-- Node scope: a node's labels and a project's node selector, both JSON
-- string maps. A project may be claimed only by a node whose labels hold
-- every pair of its selector; an empty selector matches every node.
ALTER TABLE nodes ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE projects ADD COLUMN node_selector TEXT NOT NULL DEFAULT '{}';
