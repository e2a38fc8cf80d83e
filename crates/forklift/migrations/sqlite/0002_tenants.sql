-- Tenants and their API keys. A key is stored as the SHA-256 of its secret, never in
-- clear; its short prefix is kept to tell keys apart in listings and logs.
create table forklift_tenants (
    id         blob primary key check (length(id) = 16),
    name       text not null unique,
    created_at integer not null
) strict;

create table forklift_api_keys (
    prefix     text primary key,
    tenant_id  blob not null references forklift_tenants (id),
    key_hash   text not null unique,
    created_at integer not null,
    revoked_at integer
) strict;
