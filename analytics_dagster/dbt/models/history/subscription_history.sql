-- One row per state of each subscription, valid from valid_from until valid_to (exclusive;
-- null: its current state). The states are the snapshots of its `subscription.*` events, in
-- the stream's order; a subscription with no event in the stream has not changed since its
-- updated_at, and its listed row is its one state. Contiguous: each state ends where the next
-- begins.
--
-- The listed row of a subscription that then changes is gone from the raw table (the merge
-- replaces it): this model keeps it, reading the states it recorded in its previous build. Such
-- a state stays while it is older than the subscription's first event.
{%- set previous = adapter.get_relation(database=this.database, schema=this.schema, identifier=this.identifier) %}
with snapshots as (
    select
        event_id as state_id,
        data->>'id' as subscription_id,
        event_type as changed_by,
        event_id as stream_position,
        occurred_at as valid_from,
        data->>'status' as status,
        data->>'customer_id' as customer_id,
        data->>'currency_code' as currency_code,
        data->'items' as items
    from {{ source('analytics', 'events') }}
    where event_type like 'subscription.%' and data->>'id' is not null
),

listed as (
    select
        'listed/' || s.id as state_id,
        s.id as subscription_id,
        'listed' as changed_by,
        '' as stream_position,
        s.updated_at as valid_from,
        s.status,
        s.customer_id,
        s.currency_code,
        s.items
    from {{ source('analytics', 'subscriptions') }} as s
    where not exists (select 1 from snapshots as e where e.subscription_id = s.id)
),
{%- if previous %}

listed_before as (
    select
        h.state_id,
        h.subscription_id,
        h.changed_by,
        '' as stream_position,
        h.valid_from,
        h.status,
        h.customer_id,
        h.currency_code,
        h.items
    from {{ this }} as h
    where h.changed_by = 'listed'
      and h.valid_from < (select min(e.valid_from) from snapshots as e where e.subscription_id = h.subscription_id)
),
{%- endif %}

states as (
    select * from snapshots
    union all
    select * from listed
    {%- if previous %}
    union all
    select * from listed_before
    {%- endif %}
)

select
    state_id,
    subscription_id,
    changed_by,
    status,
    customer_id,
    currency_code,
    items,
    valid_from,
    lead(valid_from) over (partition by subscription_id order by {{ byte_order('stream_position') }}) as valid_to
from states
