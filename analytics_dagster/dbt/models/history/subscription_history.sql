-- One row per state of each subscription, valid from valid_from until valid_to (exclusive;
-- null: its current state), contiguous: each state ends where the next begins.
--
-- The states, in the stream's order (the event ids'):
-- * the snapshot of each `subscription.*` event the sync applies (source/feed.py, event_problem:
--   a string event_id, data with a string id and an RFC 3339 updated_at; a malformed event,
--   which the sync sets aside, is no state either), from its occurred_at (else its data's
--   updated_at);
-- * before them, the subscription's listed row when no event of it is in the stream (it has not
--   changed since its updated_at). Once it changes, the merge replaces that row in the raw
--   table: this model keeps the state all the same, reading the states it recorded in its
--   previous build (one stays while it is older than the subscription's first event);
-- * after them, the listed row when it is newer than the newest snapshot (its updated_at more
--   than a second after the snapshot's, a second of slack for stamps of varying precision): a
--   listing read the change, and its event is late. Once the event is read it is a snapshot,
--   and this state goes.
-- A state's valid_from never goes back: a later state whose stamp reads earlier (the API's
-- timestamps do not order its changes) starts where the one before it did.
{%- set previous = adapter.get_relation(database=this.database, schema=this.schema, identifier=this.identifier) %}
with snapshots as (
    select
        event_id as state_id,
        data->>'id' as subscription_id,
        event_type as changed_by,
        event_id as stream_position,
        coalesce(occurred_at, cast(data->>'updated_at' as timestamptz)) as valid_from,
        cast(data->>'updated_at' as timestamptz) as stamped_at,
        data->>'status' as status,
        data->>'customer_id' as customer_id,
        data->>'currency_code' as currency_code,
        data->'items' as items
    from {{ source('analytics', 'events') }}
    where event_type like 'subscription.%'
      and event_id is not null and event_id <> ''
      and {{ json_is_string("data->'id'") }} and data->>'id' <> ''
      and {{ is_rfc3339("data->>'updated_at'") }}
),

newest as (
    select subscription_id, max(stamped_at) as stamped_at, min(valid_from) as first_valid_from
    from snapshots
    group by subscription_id
),

-- the listed row: the one state of a subscription with no event (before the stream), or the
-- newest when newer than its newest event (after it)
listed as (
    select
        case when n.subscription_id is null then 'listed/' else 'current/' end || s.id as state_id,
        s.id as subscription_id,
        'listed' as changed_by,
        case when n.subscription_id is null then '' else '~' end as stream_position,
        s.updated_at as valid_from,
        s.status,
        s.customer_id,
        s.currency_code,
        s.items
    from {{ source('analytics', 'subscriptions') }} as s
    left join newest as n on n.subscription_id = s.id
    where n.subscription_id is null or s.updated_at > n.stamped_at + interval '1 second'
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
    join newest as n on n.subscription_id = h.subscription_id
    where h.state_id like 'listed/%' and h.valid_from < n.first_valid_from
),
{%- endif %}

states as (
    select state_id, subscription_id, changed_by, stream_position, valid_from, status, customer_id, currency_code, items
    from snapshots
    union all
    select * from listed
    {%- if previous %}
    union all
    select * from listed_before
    {%- endif %}
),

ordered as (
    select
        *,
        max(valid_from) over (partition by subscription_id order by {{ byte_order('stream_position') }}
                              rows between unbounded preceding and current row) as starts_at
    from states
)

select
    state_id,
    subscription_id,
    changed_by,
    status,
    customer_id,
    currency_code,
    items,
    starts_at as valid_from,
    lead(starts_at) over (partition by subscription_id order by {{ byte_order('stream_position') }}) as valid_to
from ordered
