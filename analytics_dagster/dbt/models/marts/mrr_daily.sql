-- MRR per day and currency: the monthly amounts (monthly_amount) of the recurring, active items
-- (not trialing, not inactive: Paddle bills neither) of the subscriptions active at the end of
-- the day (UTC), in the subscription's currency, tax excluded, before discounts (where each
-- amount comes from: subscription_items, docs/models.md), from the first day of the history to
-- today. An item whose amount is unknown adds nothing, and is counted in unknown_items. What a
-- state's transactions billed is what its own period was billed (the line standing at its
-- priced_at: a period inferred from a transaction, that transaction's).
-- And how far each day-currency may be off (uncertain_mrr), flagged when that may be more than
-- the tolerance (var mrr_tolerance); and how far should the account not have used Paddle's
-- defaults (assumption_mrr, subscription_history.assumes), flagged_unless_defaults so:
-- docs/models.md, "Before the first known state: what is inferred".
with history_items as (
    {{ subscription_items(ref('subscription_history'), 'subscription_id',
                         ['state_id', 'status', 'valid_from', 'valid_to', 'inferred_from', 'priced_at'],
                         as_of='priced_at') }}
),

items as (
    select
        *,
        {{ counts_in_mrr('status', 'recurring', 'item_status') }} as counts,
        {{ counts_in_mrr("'active'", 'recurring', 'item_status') }} as counts_if_active
    from history_items
),

days as (
    select cast(d as date) as day
    from generate_series(
        cast((select min(valid_from) from {{ ref('subscription_history') }}) as date),
        current_date,
        interval '1 day'
    ) as g(d)
),

-- An uncertain state's (or one assuming Paddle's defaults) items may be its own (what its period billed) or those of the state it
-- changed to (changed_to_state_id: what was billed next, or the first known state) on any of
-- its days; the latter priced as the uncertain state's own period was billed (as of its
-- priced_at: its transaction's billing). Moved to another country (address), what the old
-- country's line billed does not price it: an amount only such a line gives (`billed`, no
-- override or base for the new country) is not known there
changed_to as (
    select
        u.subscription_id, u.state_id, u.valid_from, u.priced_at, c.currency_code, c.address_id, c.items,
        coalesce(ua.country_code, '') <> coalesce(ca.country_code, '') as moved_country
    from {{ ref('subscription_history') }} as u
    join {{ ref('subscription_history') }} as c on c.state_id = u.changed_to_state_id
    left join {{ ref('stg_customer_addresses') }} as ua on ua.address_id = u.address_id
    left join {{ ref('stg_customer_addresses') }} as ca on ca.address_id = c.address_id
    where u.uncertain or u.assumes is not null
),

changed_to_items as (
    {{ subscription_items('changed_to', 'subscription_id', ['state_id', 'valid_from', 'priced_at', 'moved_country'],
                         as_of='priced_at') }}
),

-- what each side adds to MRR were the subscription active, and its items of unknown amount
changed_to_mrr as (
    select
        c.state_id,
        c.currency_code,
        coalesce(sum(i.monthly_amount) filter (where i.counts_if_active), 0) as mrr_if_active,
        -- of which priced by a line a transaction billed (a converted price: its exchange rate that period's)
        coalesce(sum(i.monthly_amount) filter (where i.counts_if_active and i.amount_source = 'billed'), 0)
            as billed_mrr_if_active,
        count(*) filter (where i.counts_if_active and (i.amount_source = 'unknown'
                                                       or (i.amount_source = 'billed' and i.moved_country)))
            as unknown_items
    from changed_to as c
    left join (
        select *, {{ counts_in_mrr("'active'", 'recurring', 'item_status') }} as counts_if_active from changed_to_items
    ) as i on i.state_id = c.state_id
    group by c.state_id, c.currency_code
),

-- (assuming a pause at the period's end: one made at once may have stopped it on any of its days)
uncertain_states as (
    select
        u.state_id, u.subscription_id, u.status, u.currency_code, u.valid_from, u.valid_to, u.uncertain,
        coalesce(sum(i.monthly_amount) filter (where i.counts), 0) as mrr,
        coalesce(sum(i.monthly_amount) filter (where i.counts_if_active), 0) as mrr_if_active,
        count(*) filter (where i.counts_if_active and i.amount_source = 'unknown') as unknown_items,
        u.assumes is not null as assumes, coalesce(u.assumes, '') like '%pause_at_period_end%' as may_have_stopped
    from {{ ref('subscription_history') }} as u
    left join items as i on i.state_id = u.state_id
    where u.uncertain or u.assumes is not null
    group by u.state_id, u.subscription_id, u.status, u.currency_code, u.valid_from, u.valid_to, u.uncertain, u.assumes
),

-- The most an uncertain state can move its currency's MRR on any of its days: the difference
-- between what it counts and what it changed to (as active: its status is the period's); one
-- not active (past due; days nothing billed) may have been, with either side. In another
-- currency than its own, what it changed to may count there. Null: not known (what it changed
-- to is no state, or an amount on either side is unknown). In a new currency, what it changed to
-- is priced by the first line billed in it, at a later period's exchange rate than its days: a
-- converted amount there gets a margin for the rate's move (var exchange_rate_margin). Without Paddle's defaults
-- (assumption_bound): the same, of a state assuming them too, and one assuming a pause at the
-- period's end may have stopped, and counted nothing
bounds as (
    select
        b.*,
        case when b.bound is not null and b.may_have_stopped then greatest(b.bound, b.mrr) else b.bound end
            as assumption_bound
    from (
        select
            s.subscription_id, s.valid_from, s.valid_to, s.currency_code, s.uncertain, s.assumes, s.may_have_stopped, s.mrr,
            case when c.state_id is not null and s.unknown_items = 0 and c.unknown_items = 0 then greatest(
                abs(s.mrr - case when c.currency_code = s.currency_code then c.mrr_if_active else 0 end),
                case when coalesce(s.status, '') <> 'active' then s.mrr_if_active else 0 end)
            end as bound
        from uncertain_states as s
        left join changed_to_mrr as c on c.state_id = s.state_id
        union all
        select
            s.subscription_id, s.valid_from, s.valid_to, c.currency_code, s.uncertain, s.assumes, false, 0,
            case when s.unknown_items = 0 and c.unknown_items = 0
                 then c.mrr_if_active + c.billed_mrr_if_active * {{ var('exchange_rate_margin') }} end
        from uncertain_states as s
        join changed_to_mrr as c on c.state_id = s.state_id
        where c.currency_code <> s.currency_code
    ) as b
),

counted as (
    select
        days.day,
        i.currency_code,
        sum(i.monthly_amount) as mrr,
        count(distinct i.subscription_id) as active_subscriptions,
        count(*) filter (where i.amount_source = 'unknown') as unknown_items,
        -- subscriptions counted in a state inferred from their transactions (or their first
        -- known state extended back)
        count(distinct i.subscription_id) filter (where i.inferred_from is not null) as inferred_subscriptions
    from days
    join items as i
        on i.valid_from < days.day + interval '1 day'
        and (i.valid_to is null or i.valid_to >= days.day + interval '1 day')
    where i.counts
    group by days.day, i.currency_code
),

-- the subscriptions in an uncertain state that day, counted or not (one paused or past due may
-- have been active), and the sum of their bounds (null if one has none); and the same of those
-- in a state uncertain or assuming Paddle's defaults
uncertain_days as (
    select
        days.day,
        b.currency_code,
        count(distinct b.subscription_id) filter (where b.uncertain) as uncertain_subscriptions,
        case when count(b.bound) filter (where b.uncertain) = count(*) filter (where b.uncertain)
             then coalesce(sum(b.bound) filter (where b.uncertain), 0) end as uncertain_mrr,
        count(distinct b.subscription_id) filter (where b.assumes) as assuming_subscriptions,
        case when count(b.assumption_bound) = count(*) then sum(b.assumption_bound) end as assumption_mrr
    from days
    join bounds as b
        on b.valid_from < days.day + interval '1 day'
        and (b.valid_to is null or b.valid_to >= days.day + interval '1 day')
    group by days.day, b.currency_code
)

select
    coalesce(c.day, u.day) as day,
    coalesce(c.currency_code, u.currency_code) as currency_code,
    coalesce(c.mrr, 0) as mrr,
    coalesce(c.active_subscriptions, 0) as active_subscriptions,
    coalesce(c.unknown_items, 0) as unknown_items,
    coalesce(c.inferred_subscriptions, 0) as inferred_subscriptions,
    coalesce(u.uncertain_subscriptions, 0) as uncertain_subscriptions,
    case when u.day is null then 0 else u.uncertain_mrr end as uncertain_mrr,
    u.day is not null and {{ beyond_tolerance('u.uncertain_mrr', 'coalesce(c.mrr, 0)') }} as flagged,
    coalesce(u.assuming_subscriptions, 0) as assuming_subscriptions,
    case when u.day is null then 0 else u.assumption_mrr end as assumption_mrr,
    u.day is not null and {{ beyond_tolerance('u.assumption_mrr', 'coalesce(c.mrr, 0)') }} as flagged_unless_defaults
from counted as c
full join uncertain_days as u on u.day = c.day and u.currency_code = c.currency_code
