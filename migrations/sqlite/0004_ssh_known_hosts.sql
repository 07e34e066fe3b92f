-- SSH host keys a project pins (OpenSSH known_hosts lines); NULL accepts
-- any host key, as before.
ALTER TABLE projects ADD COLUMN ssh_known_hosts TEXT;
