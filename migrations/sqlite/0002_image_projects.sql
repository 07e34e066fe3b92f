-- Image projects deploy a prebuilt image: which one, and the port it serves on.
ALTER TABLE projects ADD COLUMN image_ref TEXT;
ALTER TABLE projects ADD COLUMN container_port INTEGER;
