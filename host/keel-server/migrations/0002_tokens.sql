-- API tokens: only a SHA-256 of each token is stored (tokens are 256-bit random values).
CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
