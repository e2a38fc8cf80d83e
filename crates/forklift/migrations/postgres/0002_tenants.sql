-- Tenants and their API keys. A key is stored as the SHA-256 of its secret, never in
-- clear; its short prefix is kept to tell keys apart in listings and logs.
create table forklift_tenants (
    id         uuid primary key,
    name       text not null unique,
    created_at timestamptz not null default now()
);

create table forklift_api_keys (
    prefix     text primary key,
    tenant_id  uuid not null references forklift_tenants (id),
    key_hash   text not null unique,
    created_at timestamptz not null default now(),
    revoked_at timestamptz
);
