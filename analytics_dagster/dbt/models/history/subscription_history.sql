-- One row per state of each subscription, valid from valid_from until valid_to (exclusive;
-- null: its current state), contiguous: each state ends where the next begins.
--
-- The states, in the stream's order (the event ids'):
-- * the snapshot of each `subscription.*` event the sync applies (source/feed.py, event_problem,
--   and the API's ids, `evt_...`: a malformed event, which the sync sets aside, is no state
--   either), from its occurred_at (else its data's updated_at);
-- * before them, the listed row (`listed/<id>`) while no event of the subscription is in the
--   stream (it has not changed since its updated_at). Once the row changes, the merge replaces
--   it in the raw table: this model keeps that state, reading what it recorded in its previous
--   build, while it is older than the subscription's first event (or, with no event yet, than
--   the new row);
-- * after them, the listed row (`current/<id>`) when it is newer than the newest snapshot in
--   the stream's order (its updated_at more than a second later: a second of slack for stamps
--   of varying precision), or than the kept listed state: a listing read a change whose event
--   is late (or the table was synced alone). Once the event is read, this state goes.
-- A state's valid_from never goes back: a later state whose stamp reads earlier (the API's
-- timestamps do not order its changes) starts where the one before it did.
{%- set previous = adapter.get_relation(database=this.database, schema=this.schema, identifier=this.identifier) %}
with snapshots as (
    select
        event_id as state_id,
        data->>'id' as subscription_id,
        event_type as changed_by,
        event_id as stream_position,
        coalesce(occurred_at, {{ rfc3339_timestamp("data->>'updated_at'") }}) as valid_from,
        {{ rfc3339_timestamp("data->>'updated_at'") }} as stamped_at,
        data->>'status' as status,
        data->>'customer_id' as customer_id,
        data->>'currency_code' as currency_code,
        data->>'address_id' as address_id,
        data->'items' as items
    from {{ source('analytics', 'events') }}
    where event_type like 'subscription.%'
      and event_id like 'evt_%'
      and {{ json_is_string("data->'id'") }} and data->>'id' <> ''
      and {{ is_rfc3339("data->>'updated_at'") }}
),

-- per subscription with events: the stamp of its newest snapshot (in the stream's order) and
-- when its first state starts
newest as (
    select subscription_id, stamped_at, first_valid_from
    from (
        select
            subscription_id,
            stamped_at,
            min(valid_from) over (partition by subscription_id) as first_valid_from,
            row_number() over (partition by subscription_id order by {{ byte_order('stream_position') }} desc) as position
        from snapshots
    ) as ranked
    where position = 1
),

-- the listed state the previous build recorded (none on the first build; one built before the
-- history carried address_id has none for it, and the row's as listed now stands in)
recorded as (
    {%- if previous %}
    {%- set recorded_address = 'address_id' if 'address_id' in adapter.get_columns_in_relation(previous) | map(attribute='name') | map('lower') | list else 'cast(null as ' ~ dbt.type_string() ~ ')' %}
    select subscription_id, valid_from, status, customer_id, currency_code, {{ recorded_address }} as address_id, items
    from {{ this }}
    where state_id like 'listed/%'
    {%- else %}
    select id as subscription_id, updated_at as valid_from, status, customer_id, currency_code, address_id, items
    from {{ source('analytics', 'subscriptions') }}
    where 1 = 0
    {%- endif %}
),

listings as (
    select
        s.id as subscription_id,
        coalesce(s.updated_at, s.created_at) as updated_at,
        s.status,
        s.customer_id,
        s.currency_code,
        s.address_id,
        s.items,
        n.subscription_id is not null as has_events,
        n.stamped_at,
        n.first_valid_from,
        r.valid_from as recorded_from,
        r.status as recorded_status,
        r.customer_id as recorded_customer_id,
        r.currency_code as recorded_currency_code,
        coalesce(r.address_id, s.address_id) as recorded_address_id,
        r.items as recorded_items,
        -- the recorded listed state stands: older than the first event, or, with none yet,
        -- than the row as listed now
        r.valid_from is not null and (
            (n.subscription_id is not null and r.valid_from < n.first_valid_from)
            or (n.subscription_id is null and coalesce(s.updated_at, s.created_at) > r.valid_from + interval '1 second')
        ) as keeps_recorded
    from {{ source('analytics', 'subscriptions') }} as s
    left join newest as n on n.subscription_id = s.id
    left join recorded as r on r.subscription_id = s.id
),

listed as (
    -- the recorded listed state, kept
    select
        'listed/' || subscription_id as state_id, subscription_id, 'listed' as changed_by, '' as stream_position,
        recorded_from as valid_from, recorded_status as status, recorded_customer_id as customer_id,
        recorded_currency_code as currency_code, recorded_address_id as address_id, recorded_items as items
    from listings
    where keeps_recorded
    union all
    -- the row as listed now: the one state of a subscription with no event, or, newer than the
    -- stream or the kept state, the newest
    select
        case when has_events or keeps_recorded then 'current/' else 'listed/' end || subscription_id,
        subscription_id,
        'listed',
        case when has_events or keeps_recorded then '~' else '' end,
        updated_at, status, customer_id, currency_code, address_id, items
    from listings
    where (not has_events and not keeps_recorded)
       or (has_events and updated_at > stamped_at + interval '1 second')
       or (not has_events and keeps_recorded)
),

states as (
    select state_id, subscription_id, changed_by, stream_position, valid_from, status, customer_id, currency_code,
        address_id, items
    from snapshots
    union all
    select * from listed
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
    address_id,
    items,
    starts_at as valid_from,
    lead(starts_at) over (partition by subscription_id order by {{ byte_order('stream_position') }}) as valid_to
from ordered
