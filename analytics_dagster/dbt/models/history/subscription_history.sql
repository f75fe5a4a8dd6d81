-- One row per state of each subscription, valid from valid_from until valid_to (exclusive;
-- null: its current state), contiguous: each state ends where the next begins.
--
-- The states, in the stream's order (the event ids'):
-- * the snapshot of each `subscription.*` event the sync applies (source/feed.py, event_problem,
--   and the API's ids, `evt_...`: a malformed event, which the sync sets aside, is no state
--   either), from its occurred_at (else its data's updated_at);
-- * before them, the listed row (`listed/<id>`) while no event of the subscription is in the
--   stream (it has not changed since its updated_at; paused or canceled, it has been since its
--   paused_at, canceled_at, a change since moving updated_at on). Once the row changes, the merge replaces
--   it in the raw table: this model keeps that state, reading what it recorded in its previous
--   build, while it is older than the subscription's first event (or, with no event yet, than
--   the new row);
-- * after them, the listed row (`current/<id>`) when it is newer than the newest snapshot in
--   the stream's order (its updated_at more than a second later: a second of slack for stamps
--   of varying precision), or than the kept listed state: a listing read a change whose event
--   is late (or the table was synced alone). Once the event is read, this state goes.
-- A state's valid_from never goes back: a later state whose stamp reads earlier (the API's
-- timestamps do not order its changes) starts where the one before it did.
-- Before the first of these (the first known state), from the subscription's creation, states
-- inferred from what its own transactions billed (inferred_from: docs/models.md, "Before the
-- first known state"), consecutive periods that change nothing merged, flagged uncertain
-- where what was billed changed with no transaction saying when, and saying what they assume
-- where their MRR holds only if the account used Paddle's defaults (assumes).
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
        data->'items' as items,
        -- paused or canceled: since when (Paddle sets paused_at, canceled_at as it pauses or
        -- cancels the subscription; a change since, a scheduled resume or its custom data, is
        -- later)
        case when data->>'status' = 'paused' and {{ is_rfc3339("data->>'paused_at'") }}
                 then {{ rfc3339_timestamp("data->>'paused_at'") }}
             when data->>'status' = 'canceled' and {{ is_rfc3339("data->>'canceled_at'") }}
                 then {{ rfc3339_timestamp("data->>'canceled_at'") }} end as stopped_at
    from {{ raw('events') }}
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
    from {{ raw('subscriptions') }}
    where 1 = 0
    {%- endif %}
),

-- each listed row, and when it stands from: its updated_at (it has not changed since), or,
-- paused or canceled since before that (its paused_at, canceled_at: a change since moved
-- updated_at on), from then (stands_from)
listed_rows as (
    select
        s.*,
        {{ stands_from('coalesce(s.updated_at, s.created_at)', 's.stopped_at', 's.created_at') }} as listed_from
    from (
        select *, case status when 'paused' then paused_at when 'canceled' then canceled_at end as stopped_at
        from {{ raw('subscriptions') }}
    ) as s
),

listings as (
    select
        s.id as subscription_id,
        coalesce(s.updated_at, s.created_at) as updated_at,
        s.listed_from,
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
            or (n.subscription_id is null and s.listed_from > r.valid_from + interval '1 second')
        ) as keeps_recorded
    from listed_rows as s
    left join newest as n on n.subscription_id = s.id
    left join recorded as r on r.subscription_id = s.id
),

listed as (
    -- the recorded listed state, kept
    select
        'listed/' || subscription_id as state_id, subscription_id, 'listed' as changed_by, '' as stream_position,
        recorded_from as valid_from, recorded_status as status, recorded_customer_id as customer_id,
        recorded_currency_code as currency_code, recorded_address_id as address_id, recorded_items as items,
        cast(null as timestamptz) as stopped_at
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
        case when has_events or keeps_recorded then updated_at else listed_from end,
        status, customer_id, currency_code, address_id, items, cast(null as timestamptz)
    from listings
    where (not has_events and not keeps_recorded)
       or (has_events and updated_at > stamped_at + interval '1 second')
       or (not has_events and keeps_recorded)
),

states as (
    select state_id, subscription_id, changed_by, stream_position, valid_from, status, customer_id, currency_code,
        address_id, items, stopped_at
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
),

observed as (
    select
        state_id, subscription_id, changed_by, status, customer_id, currency_code, address_id, items,
        starts_at as valid_from,
        lead(starts_at) over (partition by subscription_id order by {{ byte_order('stream_position') }}) as valid_to,
        row_number() over (partition by subscription_id order by {{ byte_order('stream_position') }}) as position,
        stopped_at
    from ordered
),

-- The first known state of each subscription, and when the subscription began: its created_at
-- as listed (else the first state's start); and whether it was imported (Paddle's
-- `subscription.imported`, `import_meta` set: migrated from another biller, active from its
-- creation with no checkout's transaction, its first the first renewal Paddle bills); and
-- since when it is known (known_from): the first state's start, or, that state paused or
-- canceled since before it began (its paused_at, canceled_at: a change since, its event's), from
-- then, not before the creation
first_known as (
    select
        k.*,
        {{ stands_from('k.valid_from', 'k.stopped_at', 'k.created_at') }} as known_from
    from (
        select
            o.*,
            coalesce(least(s.created_at, o.valid_from), o.valid_from) as created_at,
            coalesce(o.changed_by = 'subscription.imported' or s.import_meta->>'imported_from' is not null, false)
                as imported
        from observed as o
        left join {{ raw('subscriptions') }} as s on s.id = o.subscription_id
        where o.position = 1
    ) as k
),

-- A checkout's transaction of a trial: Paddle's checkout bills "recurring items with trials ...
-- a zero charge", for the trial period (its billing_period): every line of a recurring item of
-- it charges nothing
trial_checkouts as (
    select l.transaction_id
    from {{ ref('stg_transaction_line_items') }} as l
    join (
        select t.id as transaction_id, item.value->'price'->>'id' as price_id
        from {{ raw('transactions') }} as t,
            {{ json_array_elements('t.items', none, 'item') }}
        where t.origin in ('web', 'api')
          and coalesce(cast(item.value->>'recurring' as boolean), item.value->'price'->'billing_cycle'->>'interval' is not null)
    ) as r on r.transaction_id = l.transaction_id and r.price_id = l.price_id
    group by l.transaction_id
    having min(case when l.unit_subtotal = 0 then 1 else 0 end) = 1
),

-- A period's transaction paid late (its payments and payment terms say when): the subscription
-- was past due from when the payment was due and not made (failed_at) until it was paid
-- (paid_at: the first captured payment's captured_at; null: never paid, the transaction still
-- past due), Paddle's `past_due` (the transaction, once paid, is `completed` like any other).
-- Collected automatically (Paddle charges the payment method on file), a renewal is late when
-- its first attempt that did not capture failed, more than an hour before one captured, or on
-- an earlier day (UTC: an attempt retried at once, Paddle's own example captured 3 minutes after
-- a decline, leaves no past-due day, unless a day ends between them, and mrr_daily takes each
-- day's state at its end); collected manually (an invoice), when its payment terms elapsed
-- (`billing_details.payment_terms` from its billed_at: Paddle makes it past due "when payment
-- terms have elapsed for a manually-collected transaction"), and it was late if not paid by then.
-- One billed, then canceled (an invoice "no longer due"), never paid: as one still past due
payments as (
    select
        t.id as transaction_id,
        min(case when p.value->>'status' = 'captured' and {{ is_rfc3339("p.value->>'captured_at'") }}
                 then {{ rfc3339_timestamp("p.value->>'captured_at'") }} end) as paid_at,
        min(case when p.value->>'status' <> 'captured' and {{ is_rfc3339("p.value->>'created_at'") }}
                 then {{ rfc3339_timestamp("p.value->>'created_at'") }} end) as failed_at
    from {{ raw('transactions') }} as t,
        {{ json_array_elements('t.payments', none, 'p') }}
    where t.subscription_id is not null
    group by t.id
),

paid_late as (
    select transaction_id, failed_at, paid_at
    from (
        select
            t.id as transaction_id,
            t.status,
            case when t.collection_mode = 'manual'
                 then coalesce(t.billed_at, t.created_at) + {{ payment_terms("t.billing_details->'payment_terms'") }}
                 else p.failed_at end as failed_at,
            p.paid_at
        from {{ raw('transactions') }} as t
        left join payments as p on p.transaction_id = t.id
        where t.subscription_id is not null
          and (t.origin = 'subscription_recurring' or t.collection_mode = 'manual')
          and (t.status in ('paid', 'completed', 'canceled')
               or (t.status = 'past_due' and t.collection_mode = 'manual'))
    ) as due
    where (status in ('paid', 'completed') and failed_at < paid_at
           and (failed_at < paid_at - interval '1 hour' or cast(failed_at as date) <> cast(paid_at as date)))
       or (status in ('past_due', 'canceled') and failed_at is not null)
),

-- What the subscription's own transactions billed (transactions, unlike events, stay in the
-- API): each of its checkout's (web; or, sold on an invoice, the transaction made through the
-- API that created it: api, with the subscription and its first billing period), renewals'
-- (subscription_recurring) and changes' (subscription_update), billed, paid, completed or past due
-- (or billed, then canceled: an invoice no longer due, for a period the subscription had until
-- it ended, as far as the next state), with a billing period (a trial's
-- checkout: trialing, its period the trial); `billed`: those of the periods before its first
-- known state; `failed_at`, `paid_at`: one paid late (paid_late), when its payment was due
-- and not made (from its period's start at the earliest) and when it was paid (null: never)
billed_all as (
    select
        t.id as transaction_id,
        t.subscription_id,
        t.origin,
        case when t.status = 'past_due' then 'past_due'
             when t.id in (select transaction_id from trial_checkouts) then 'trialing'
             else 'active' end as status,
        t.customer_id,
        coalesce(t.details->'totals'->>'currency_code', t.currency_code) as currency_code,
        coalesce(t.address_id, f.address_id) as address_id,
        t.items,
        coalesce(t.billed_at, t.created_at) as billed_at,
        {{ rfc3339_timestamp("t.billing_period->>'starts_at'") }} as period_start,
        {{ rfc3339_timestamp("t.billing_period->>'ends_at'") }} as period_end,
        -- (one billed, then canceled, never paid, is unpaid only if the subscription ended with
        -- it: canceled, and no later period billed; one canceled while the subscription went on
        -- was forgiven or replaced, and its period was the subscription's)
        case when l.failed_at is not null and (t.status <> 'canceled' or (
                f.status = 'canceled' and {{ rfc3339_timestamp("t.billing_period->>'starts_at'") }} >= n.last_start))
             then greatest(l.failed_at, {{ rfc3339_timestamp("t.billing_period->>'starts_at'") }}) end as failed_at,
        l.paid_at
    from {{ raw('transactions') }} as t
    join first_known as f on f.subscription_id = t.subscription_id
    left join paid_late as l on l.transaction_id = t.id
    left join (
        select subscription_id, max({{ rfc3339_timestamp("billing_period->>'starts_at'") }}) as last_start
        from {{ raw('transactions') }}
        where subscription_id is not null and status in ('billed', 'paid', 'completed', 'past_due', 'canceled')
          and {{ is_rfc3339("billing_period->>'starts_at'") }}
        group by subscription_id
    ) as n on n.subscription_id = t.subscription_id
    where t.origin in ('web', 'api', 'subscription_recurring', 'subscription_update')
      and (t.status in ('billed', 'paid', 'completed', 'past_due') or (t.status = 'canceled' and t.billed_at is not null))
      and {{ is_rfc3339("t.billing_period->>'starts_at'") }}
      and {{ is_rfc3339("t.billing_period->>'ends_at'") }}
),

billed as (
    select b.*
    from billed_all as b
    join first_known as f on f.subscription_id = b.subscription_id
    where b.period_start < f.known_from
),

-- a change's transaction (subscription_update) says when the subscription changed; what it
-- was from then is what was billed next (the next period's transaction, else the first known
-- state): Paddle's lists the prorated items, not every item
next_billed as (
    select
        u.transaction_id,
        b.currency_code,
        b.address_id,
        b.items,
        row_number() over (partition by u.transaction_id order by b.period_start, b.transaction_id) as n
    from billed as u
    join billed as b
        on b.subscription_id = u.subscription_id and b.origin <> 'subscription_update' and b.period_start > u.period_start
    where u.origin = 'subscription_update'
),

-- and what it was billed is what the period it changed in was (the transaction before it)
billed_before as (
    select
        u.transaction_id,
        b.transaction_id as billed_transaction_id,
        row_number() over (partition by u.transaction_id order by b.period_start desc, b.transaction_id desc) as n
    from billed as u
    join billed as b
        on b.subscription_id = u.subscription_id and b.origin <> 'subscription_update' and b.period_start <= u.period_start
    where u.origin = 'subscription_update'
),

periods as (
    select
        b.transaction_id, b.subscription_id, b.origin, b.status, b.customer_id,
        case when b.origin = 'subscription_update' then p.billed_transaction_id else b.transaction_id end
            as amounts_from,
        case when b.origin = 'subscription_update' then coalesce(n.currency_code, f.currency_code) else b.currency_code end
            as currency_code,
        case when b.origin = 'subscription_update' then coalesce(n.address_id, f.address_id) else b.address_id end
            as address_id,
        case when b.origin = 'subscription_update' then coalesce(n.items, f.items) else b.items end as items,
        b.period_start,
        b.period_end,
        b.failed_at,
        b.paid_at,
        f.known_from
    from billed as b
    join first_known as f on f.subscription_id = b.subscription_id
    left join next_billed as n on n.transaction_id = b.transaction_id and n.n = 1
    left join billed_before as p on p.transaction_id = b.transaction_id and p.n = 1
),

-- Does a change's transaction account for the whole change? What it lists (each price it bills
-- at its new quantity; a price it lists only at a quantity of 0 or less, a credit, is gone), put
-- over what the period it changed in was billed, must be what was billed next (or the first
-- known state). If not, another change that billed nothing (do_not_bill) came between them, on
-- a day nothing says: the state from the billed change on is uncertain
change_sides as (
    select s.transaction_id, s.side, item.value->'price'->>'id' as price_id,
        cast(item.value->>'quantity' as bigint) as quantity
    from (
        select p.transaction_id, 'change' as side, b.items
        from periods as p
        join billed as b on b.transaction_id = p.transaction_id
        where p.origin = 'subscription_update'
        union all
        select p.transaction_id, 'before', b.items
        from periods as p
        join billed as b on b.transaction_id = p.amounts_from
        where p.origin = 'subscription_update'
        union all
        select transaction_id, 'after', items from periods where origin = 'subscription_update'
    ) as s,
        {{ json_array_elements('s.items', none, 'item') }}
    where {{ billed_item("item.value->>'status'") }}
      and coalesce(cast(item.value->>'recurring' as boolean), item.value->'price'->'billing_cycle'->>'interval' is not null)
),

unaccounted_changes as (
    select distinct transaction_id
    from (
        select
            transaction_id,
            sum(case when side = 'change' and quantity > 0 then quantity end) as changed_to,
            max(case when side = 'change' then 1 else 0 end) as listed,
            sum(case when side = 'before' then quantity end) as before_quantity,
            sum(case when side = 'after' then quantity end) as after_quantity
        from change_sides
        group by transaction_id, price_id
    ) as by_price
    where coalesce(case when listed = 1 then changed_to else before_quantity end, 0)
       <> coalesce(after_quantity, 0)
),

-- What a state's MRR depends on, as text: its status, currency and address (whose country
-- localizes its prices), and each billed, recurring item's price and quantity; and the same
-- without the status (what a change of items, currency or address alters)
item_keys as (
    select
        k.key_id,
        {{ dbt.listagg("k.price_id || '*' || k.quantity", "','", "order by k.price_id, k.quantity") }} as item_key
    from (
        select
            st.key_id,
            item.value->'price'->>'id' as price_id,
            item.value->>'quantity' as quantity
        from (
            select state_id as key_id, items from observed
            union all
            select transaction_id, items from periods
        ) as st,
            {{ json_array_elements('st.items', none, 'item') }}
        where {{ billed_item("item.value->>'status'") }}
          and coalesce(cast(item.value->>'recurring' as boolean), item.value->'price'->'billing_cycle'->>'interval' is not null)
    ) as k
    group by k.key_id
),

-- what each period's transaction billed a unit of each price (a converted price's amount moves
-- with the exchange rate from one period to the next)
line_keys as (
    select
        l.transaction_id,
        {{ dbt.listagg("l.price_id || '@' || cast(l.unit_subtotal as " ~ dbt.type_string() ~ ")", "','",
                       "order by l.price_id, l.unit_subtotal") }} as line_key
    from {{ ref('stg_transaction_line_items') }} as l
    join billed as b on b.transaction_id = l.transaction_id and b.origin <> 'subscription_update'
    where not l.prorated
    group by l.transaction_id
),

keyed_periods as (
    select
        p.*,
        coalesce(p.currency_code, '') || '|' || coalesce(p.address_id, '') || '|' || coalesce(k.item_key, '') as content,
        p.status || '|' || coalesce(l.line_key, '') as billed_key,
        coalesce(f.currency_code, '') || '|' || coalesce(f.address_id, '') || '|' || coalesce(fk.item_key, '') as known_content,
        f.state_id as known_state_id,
        f.status as known_status,
        -- when the transaction its amounts come from billed (a renewal is billed a little after
        -- its period starts: Paddle's own example, 35 s): what prices the period is the line it
        -- billed, not the one standing at the period's start (the period before's)
        a.billed_at as priced_at
    from periods as p
    join first_known as f on f.subscription_id = p.subscription_id
    left join billed as a on a.transaction_id = p.amounts_from
    left join item_keys as k on k.key_id = p.transaction_id
    left join item_keys as fk on fk.key_id = f.state_id
    left join line_keys as l on l.transaction_id = p.amounts_from
),

-- a period is uncertain when what it billed is not what was billed next (or the first known
-- state) and no change's transaction says when that changed: the change was within it (or
-- between it and the next), its day unknown. changed_to_state_id: the state that says what it
-- changed to (the next period's, which starts a state of its own, its content differing; else
-- the first known state), which it may have been on any of its days; null for a change's
-- transaction that does not account for the whole change (what it made of the items, before
-- the unbilled change, is no state).
-- What a period's MRR holds only if the account used Paddle's defaults (assumes; once the
-- events are gone nothing tells them apart): followed by days nothing billed (before the next
-- period, or the first known state), that a pause or cancellation took effect at the period's
-- end (`pause_at_period_end`: one made at once may have stopped it on any of its days; the days
-- after it, below, assume `billing_date_kept`); cut short by the next period (one starting
-- before it ended, not a change's), the same: a pause at once resumed in a new period
-- (Paddle's default `on_resume`) leaves what a billing date moved earlier unbilled does, the
-- days between the pause and the resume active; cut short by a first known state canceled, the
-- same (a pause at once before it, its paused_at gone with the cancellation, leaves what a
-- cancellation at once does); followed by a change's transaction (from its
-- start to the change), that no change billing nothing came first
-- (`no_unbilled_change_before`: the change's lines say what it left, not what it found; what
-- such a change made is no state, changed_to_state_id null)
flagged_periods as (
    select
        p.*,
        (coalesce(lead(p.content) over w, p.known_content) <> p.content
            and coalesce(lead(p.origin) over w, 'known') <> 'subscription_update')
            or u.transaction_id is not null as uncertain,
        nullif(concat_ws(',',
            case when p.period_end < coalesce(lead(p.period_start) over w, p.known_from) - interval '1 second'
                      or (p.period_end > lead(p.period_start) over w + interval '1 second'
                          and lead(p.origin) over w <> 'subscription_update')
                      or (lead(p.period_start) over w is null and p.known_status = 'canceled'
                          and p.period_end > p.known_from + interval '1 second')
                 then 'pause_at_period_end' end,
            case when lead(p.origin) over w = 'subscription_update' then 'no_unbilled_change_before' end), '') as assumes,
        case when u.transaction_id is null and coalesce(lead(p.origin) over w, 'known') <> 'subscription_update'
             then coalesce('inferred/' || lead(p.transaction_id) over w, p.known_state_id) end as changed_to_state_id
    from keyed_periods as p
    left join unaccounted_changes as u on u.transaction_id = p.transaction_id
    window w as (partition by p.subscription_id order by p.period_start, p.transaction_id)
),

period_states as (
    select
        p.*,
        -- a period right after the previous one, that changes nothing MRR depends on (the same
        -- status, items, currency, address and amounts billed), and paid when due, continues
        -- its state
        case when lag(p.period_end) over w >= p.period_start - interval '1 second'
                  and lag(p.content) over w = p.content and lag(p.billed_key) over w = p.billed_key
                  and lag(p.uncertain) over w = p.uncertain
                  and coalesce(lag(p.assumes) over w, '') = coalesce(p.assumes, '') and p.failed_at is null
             then 0 else 1 end as starts_run
    from flagged_periods as p
    window w as (partition by p.subscription_id order by p.period_start, p.transaction_id)
),

runs as (
    select *, sum(starts_run) over (partition by subscription_id order by period_start, transaction_id
                                    rows between unbounded preceding and current row) as run
    from period_states
),

-- consecutive periods that change nothing MRR depends on (renewals) are one state: the first
-- period's transaction, to the last one's end
merged as (
    select
        r.transaction_id, r.subscription_id, r.origin, r.status, r.customer_id, r.currency_code, r.address_id,
        r.items, r.uncertain, r.assumes,
        case when r.uncertain or r.assumes is not null then r.changed_to_state_id end as changed_to_state_id,
        r.period_start, e.period_end, r.failed_at, r.paid_at, r.known_from, r.priced_at
    from runs as r
    join (select subscription_id, run, max(period_end) as period_end from runs group by subscription_id, run) as e
        on e.subscription_id = r.subscription_id and e.run = r.run
    where r.starts_run = 1
),

-- each merged period, from its start (not before the subscription's creation: an invoice made
-- through the API may bill a period that began before it, which the subscription did not have;
-- an imported subscription's first, from its creation: it was active before Paddle billed it)
-- to the next one (or the first known state), or to its end
-- if nothing was billed in between
inferred_periods as (
    select
        n.*,
        case when n.n = 1 and f.imported then least(f.created_at, n.period_start)
             else greatest(n.period_start, f.created_at) end as starts_at,
        case when n.period_end < n.next_from - interval '1 second' then n.period_end else n.next_from end as ends_at,
        f.state_id as known_state_id
    from (
        select
            m.*,
            coalesce(lead(m.period_start) over w, m.known_from) as next_from,
            'inferred/' || lead(m.transaction_id) over w as next_state_id,
            row_number() over w as n
        from merged as m
        window w as (partition by m.subscription_id order by m.period_start, m.transaction_id)
    ) as n
    join first_known as f on f.subscription_id = n.subscription_id
),

inferred as (
    -- a billed period (one paid late, from when it was paid, if within it)
    select
        'inferred/' || i.transaction_id as state_id, i.subscription_id, 'inferred' as changed_by, i.status,
        i.customer_id, i.currency_code, i.address_id, i.items, coalesce(i.paid_at, i.starts_at) as valid_from,
        i.ends_at as valid_to,
        'transaction' as inferred_from, i.transaction_id,
        i.uncertain, i.assumes, i.changed_to_state_id, i.priced_at,
        i.transaction_id as key_id
    from inferred_periods as i
    where i.failed_at is null or i.paid_at < i.ends_at
    union all
    -- one paid late (its payments, or an invoice's payment terms, say): active until its payment
    -- was due, then past due until it was paid (never: to the period's end, or, due after it, to
    -- the first known state), past the period's end if it was paid after (Paddle renews nothing
    -- while it is past due: the states after start once it was paid, below); terms that outlast
    -- the period leave it active to its end, then the next period's, past due from the terms' end
    select
        'inferred/' || i.transaction_id || '/' || p.part, i.subscription_id, 'inferred',
        case when p.part = 'unpaid' then 'past_due' when i.status = 'past_due' then 'active' else i.status end,
        i.customer_id, i.currency_code, i.address_id,
        i.items, p.valid_from, p.valid_to, 'payments', i.transaction_id, p.part = 'billed' and i.uncertain,
        case when p.part = 'billed' then i.assumes end, case when p.part = 'billed' then i.changed_to_state_id end,
        i.priced_at, i.transaction_id
    from inferred_periods as i
    join (
        select transaction_id, 'billed' as part, starts_at as valid_from, least(failed_at, ends_at) as valid_to
        from inferred_periods
        where failed_at is not null
        union all
        select transaction_id, 'unpaid', least(failed_at, known_from),
            case when paid_at is not null then least(paid_at, known_from)
                 when failed_at < ends_at then ends_at else known_from end
        from inferred_periods
        where failed_at is not null
    ) as p on p.transaction_id = i.transaction_id and p.valid_from < p.valid_to
    union all
    -- nothing billed between a period's end and the next state: not billed (paused, canceled
    -- and since resumed, or past due and not paid), assuming the billing date was kept: one moved
    -- later with nothing billed (do_not_bill) leaves the same days, the subscription active with
    -- the period's items (its own), or with the next state's (changed_to_state_id)
    select
        'inferred/' || transaction_id || '/after', subscription_id, 'inferred', cast(null as {{ dbt.type_string() }}),
        customer_id, currency_code, address_id, items, period_end, next_from, 'no_transaction', transaction_id, false,
        'billing_date_kept', coalesce(next_state_id, known_state_id), cast(null as timestamptz), transaction_id
    from inferred_periods
    where period_end < next_from - interval '1 second'
    union all
    -- from its creation to the first billed period: not billed (a trial; an imported subscription
    -- was active: its first period's state, above)
    select
        'inferred/' || i.subscription_id || '/before', i.subscription_id, 'inferred', cast(null as {{ dbt.type_string() }}),
        i.customer_id, i.currency_code, i.address_id, i.items, f.created_at, i.period_start, 'no_transaction',
        cast(null as {{ dbt.type_string() }}), false, cast(null as {{ dbt.type_string() }}),
        cast(null as {{ dbt.type_string() }}), cast(null as timestamptz), i.transaction_id
    from inferred_periods as i
    join first_known as f on f.subscription_id = i.subscription_id
    where i.n = 1 and f.created_at < i.period_start - interval '1 second' and not f.imported
    union all
    -- no transaction billed it before its first known state: if one did since (its first period
    -- starts there: a trial), nothing was billed before, unless it was imported (active from its
    -- creation, unbilled); if none ever did, or it was imported, its first known state, from its
    -- creation, uncertain unless that state is the creation: a change (an update's event, or a
    -- listed row changed since its creation, this row's start being later) says what the
    -- subscription became, not what it was before
    select
        'inferred/' || f.subscription_id, f.subscription_id, 'inferred',
        case when a.subscription_id is null or f.imported then f.status end, f.customer_id, f.currency_code,
        f.address_id, f.items, f.created_at, f.known_from,
        case when a.subscription_id is null or f.imported then 'first_state' else 'no_transaction' end,
        cast(null as {{ dbt.type_string() }}),
        (a.subscription_id is null or f.imported) and f.changed_by not in ('subscription.created', 'subscription.imported'),
        cast(null as {{ dbt.type_string() }}), cast(null as {{ dbt.type_string() }}), cast(null as timestamptz), f.state_id
    from first_known as f
    left join (select distinct subscription_id from billed_all) as a on a.subscription_id = f.subscription_id
    where f.created_at < f.known_from - interval '1 second'
      and not exists (select 1 from periods as p where p.subscription_id = f.subscription_id)
    union all
    -- its first known state, paused or canceled since before it began: so since then (its
    -- paused_at, canceled_at)
    select
        'inferred/' || f.subscription_id || '/' || f.status, f.subscription_id, 'inferred', f.status, f.customer_id,
        f.currency_code, f.address_id, f.items, f.known_from, f.valid_from, f.status || '_at',
        cast(null as {{ dbt.type_string() }}), false, cast(null as {{ dbt.type_string() }}),
        cast(null as {{ dbt.type_string() }}), cast(null as timestamptz), f.state_id
    from first_known as f
    where f.known_from < f.valid_from
),

-- the days a period paid late was past due (unpaid) are no other state's: a state inferred that
-- overlaps them stops where they start and, if it outlasts them, resumes once it was paid
-- (`/resumed`: the next period of an invoice whose payment terms outlast its own, renewed before
-- it was past due); one starting within them, from the payment; one wholly within, none
unpaid_spans as (
    select subscription_id, state_id as unpaid_id, valid_from as unpaid_from, valid_to as unpaid_to
    from inferred
    where inferred_from = 'payments' and status = 'past_due' and valid_from < valid_to
),

unpaid_overlaps as (
    select
        i.state_id,
        min(u.unpaid_from) filter (where u.unpaid_from > i.valid_from) as cut_at,
        max(u.unpaid_to) as resumes_at
    from inferred as i
    join unpaid_spans as u
        on u.subscription_id = i.subscription_id and u.unpaid_id <> i.state_id
        and u.unpaid_from < i.valid_to and u.unpaid_to > i.valid_from
    where not (i.inferred_from = 'payments' and i.status = 'past_due')
    group by i.state_id
),

inferred_after_payment as (
    select *
    from (
        select
            i.state_id, i.subscription_id, i.changed_by, i.status, i.customer_id, i.currency_code, i.address_id,
            i.items, i.valid_from, coalesce(o.cut_at, i.valid_to) as valid_to, i.inferred_from, i.transaction_id,
            i.uncertain, i.assumes, i.changed_to_state_id, i.priced_at, i.key_id
        from inferred as i
        left join unpaid_overlaps as o on o.state_id = i.state_id
        where o.state_id is null or o.cut_at is not null
        union all
        select
            case when o.cut_at is null then i.state_id else i.state_id || '/resumed' end, i.subscription_id,
            i.changed_by, i.status, i.customer_id, i.currency_code, i.address_id, i.items,
            greatest(o.resumes_at, i.valid_from), i.valid_to, i.inferred_from, i.transaction_id, i.uncertain,
            i.assumes, i.changed_to_state_id, i.priced_at, i.key_id
        from inferred as i
        join unpaid_overlaps as o on o.state_id = i.state_id
        where o.resumes_at < i.valid_to
    ) as i
    where valid_from < valid_to
),

history as (
    select
        state_id, subscription_id, changed_by, status, customer_id, currency_code, address_id, items, valid_from,
        valid_to, cast(null as {{ dbt.type_string() }}) as inferred_from, cast(null as {{ dbt.type_string() }}) as transaction_id,
        false as uncertain, cast(null as {{ dbt.type_string() }}) as assumes,
        cast(null as {{ dbt.type_string() }}) as changed_to_state_id,
        cast(null as timestamptz) as priced_at, state_id as key_id, position
    from observed
    union all
    select *, 0 from inferred_after_payment
)

select
    h.state_id,
    h.subscription_id,
    h.changed_by,
    h.status,
    h.customer_id,
    h.currency_code,
    h.address_id,
    h.items,
    h.valid_from,
    h.valid_to,
    h.inferred_from,
    h.transaction_id,
    h.uncertain,
    h.assumes,
    h.changed_to_state_id,
    -- the instant whose billed lines price it (subscription_items' as_of): a period inferred from
    -- a transaction, when that transaction billed; any other state, its start
    coalesce(h.priced_at, h.valid_from) as priced_at,
    -- whether anything MRR depends on differs from the state before (a renewal: false)
    coalesce(
        lag(coalesce(h.status, '') || '|' || coalesce(h.currency_code, '') || '|' || coalesce(h.address_id, '') || '|'
            || coalesce(k.item_key, '')) over (partition by h.subscription_id order by h.valid_from, h.position, h.state_id)
        <> coalesce(h.status, '') || '|' || coalesce(h.currency_code, '') || '|' || coalesce(h.address_id, '') || '|'
            || coalesce(k.item_key, ''),
        true) as changes_mrr
from history as h
left join item_keys as k on k.key_id = h.key_id
