-- RepoVault job store. Safe to apply more than once (every statement is idempotent).
-- Two roles: rv_writer (the daemons: the only path that creates or changes job rows)
-- and rv_reader (the rv CLI: read-only). Passwords are set by whoever provisions the
-- server (the local stack or compose), never here.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rv_writer') THEN
        CREATE ROLE rv_writer LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rv_reader') THEN
        CREATE ROLE rv_reader LOGIN;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS jobs (
    id                          uuid PRIMARY KEY,
    repo_url                    text NOT NULL,          -- normalised, never carries credentials
    state                       text NOT NULL,
    submitted_by                text,                   -- from the verified token, never from the client
    error                       text,                   -- a reason a person understands
    bucket                      text,
    snapshot                    text,                   -- snapshot id inside the bucket
    head_commit                 text,
    bytes_stored                bigint,
    attempts                    integer NOT NULL DEFAULT 0,
    worker_id                   text,
    creation_timestamp          timestamptz NOT NULL DEFAULT now(),
    injector_timestamp          timestamptz,
    worker_start_timestamp      timestamptz,
    worker_finishing_timestamp  timestamptz,
    CONSTRAINT jobs_state_known CHECK (state IN
        ('queued', 'dispatched', 'running', 'done', 'unchanged', 'failed', 'rejected', 'duplicate'))
);

CREATE INDEX IF NOT EXISTS jobs_state_idx ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_repo_created_idx ON jobs (repo_url, creation_timestamp DESC);
CREATE INDEX IF NOT EXISTS jobs_created_idx ON jobs (creation_timestamp DESC);
-- At most one job per repository is dispatched or running: the injector's duplicate
-- policy rests on this index, so two injectors cannot both dispatch the same repository.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_active_per_repo ON jobs (repo_url)
    WHERE state IN ('dispatched', 'running');

REVOKE ALL ON jobs FROM PUBLIC;
GRANT SELECT ON jobs TO rv_reader;
GRANT SELECT, INSERT, UPDATE ON jobs TO rv_writer;
