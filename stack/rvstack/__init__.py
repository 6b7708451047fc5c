"""The parts of stack/localstack.py: RepoVault's local services as plain processes.

settings      versions, ports, names: the constants (tests/test_compose.py reads them)
console       progress lines, errors a person can act on, secret redaction
files         JSON and private files, locks, log tails
config        Config (directories, ports) and the application's RV_* environment
state         .stack/state.json and the generated secrets
processes     pid files, spawning, stopping, health waits, port checks, one-off commands
tools         Java versions, tools on PATH, Maven, HTTP probes
postgres, kafka, minio, keycloak, keycloak_admin
              install, start, health-check and provision one service each
start         the `start` command
commands      install, status, stop, env, logs
"""
