-- API token scopes, expiry and last use. Tokens made before scopes existed keep full power
-- ('admin'); 'read' < 'deploy' < 'admin'. Times in µs since the epoch; NULL: never expires /
-- never used.
ALTER TABLE api_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin';
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE api_tokens ADD COLUMN last_used_at BIGINT;
CREATE INDEX api_tokens_by_account ON api_tokens (account_id);
