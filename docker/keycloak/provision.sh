#!/bin/bash
# One-shot run by the `keycloak-provision` service after Keycloak is healthy (every
# `docker compose up`). Keycloak imported realm/rv-realm.json at its first start; this sets
#   - the rv-cron client secret to RV_CRON_CLIENT_SECRET, so cron users of `rv` know it
#     (the realm file lets Keycloak generate one nobody knows);
#   - the github identity provider: enabled with GITHUB_OAUTH_CLIENT_ID/SECRET when both
#     are set, disabled otherwise (as stack/localstack.py does).
set -euo pipefail
kcadm=${KCADM:-/opt/keycloak/bin/kcadm.sh}
workdir=$(mktemp -d /tmp/kcadm.XXXXXX)
trap 'rm -rf "$workdir"' EXIT
config=$workdir/kcadm.config
realm=${KEYCLOAK_REALM:-rv}
client=${RV_CRON_CLIENT_ID:-rv-cron}
: "${RV_CRON_CLIENT_SECRET:?RV_CRON_CLIENT_SECRET is not set (see .env.example)}"

# kcadm reads the admin password from KC_CLI_PASSWORD (never on the command line).
: "${KC_CLI_PASSWORD:?KC_CLI_PASSWORD (the Keycloak admin password) is not set}"
"$kcadm" config credentials --config "$config" \
    --server "${KEYCLOAK_INTERNAL_URL:-http://keycloak:58080}" --realm master \
    --user "${KEYCLOAK_ADMIN_USER:-admin}" >/dev/null

id=$("$kcadm" get clients --config "$config" -r "$realm" -q "clientId=$client" \
    --fields id --format csv --noquotes)
if [[ -z "$id" ]]; then
    echo "keycloak-provision: realm $realm has no client $client: check realm/rv-realm.json" >&2
    exit 1
fi
"$kcadm" update "clients/$id" --config "$config" -r "$realm" \
    -s "secret=$RV_CRON_CLIENT_SECRET"
echo "keycloak-provision: $client secret set from RV_CRON_CLIENT_SECRET"

if [[ -n "${GITHUB_OAUTH_CLIENT_ID:-}" && -n "${GITHUB_OAUTH_CLIENT_SECRET:-}" ]]; then
    "$kcadm" update identity-provider/instances/github --config "$config" -r "$realm" \
        -s enabled=true -s "config.clientId=$GITHUB_OAUTH_CLIENT_ID" \
        -s "config.clientSecret=$GITHUB_OAUTH_CLIENT_SECRET"
    echo "keycloak-provision: github identity provider configured and enabled"
else
    "$kcadm" update identity-provider/instances/github --config "$config" -r "$realm" \
        -s enabled=false
    echo "keycloak-provision: github identity provider disabled (GITHUB_OAUTH_CLIENT_ID/SECRET unset)"
fi
