-- MRR per day and currency: the monthly amounts (monthly_amount) of the recurring, active items
-- (not trialing, not inactive: Paddle bills neither) of the subscriptions active at the end of
-- the day (UTC), in the subscription's currency, tax excluded, before discounts (where each
-- amount comes from: subscription_items, docs/models.md), from the first day of the history to
-- today. An item whose amount is unknown adds nothing, and is counted in unknown_items. What a
-- state's transactions billed is what its own period was billed (the line standing at its start).
with history_items as (
    {{ subscription_items(ref('subscription_history'), 'subscription_id', ['status', 'valid_from', 'valid_to', 'inferred_from', 'uncertain'],
                         as_of='valid_from') }}
),

days as (
    select cast(d as date) as day
    from generate_series(
        cast((select min(valid_from) from {{ ref('subscription_history') }}) as date),
        current_date,
        interval '1 day'
    ) as g(d)
)

select
    days.day,
    i.currency_code,
    coalesce(sum(i.monthly_amount) filter (where i.counts), 0) as mrr,
    count(distinct i.subscription_id) filter (where i.counts) as active_subscriptions,
    count(*) filter (where i.counts and i.amount_source = 'unknown') as unknown_items,
    -- subscriptions counted in a state inferred from their transactions (or their first known
    -- state extended back); and those in a state that may be off, counted or not (one whose state
    -- may be paused or past due may have been active): a flagged day
    count(distinct i.subscription_id) filter (where i.counts and i.inferred_from is not null) as inferred_subscriptions,
    count(distinct i.subscription_id) filter (where i.uncertain) as uncertain_subscriptions
from days
join (
    select *, {{ counts_in_mrr('status', 'recurring', 'item_status') }} as counts from history_items
) as i
    on i.valid_from < days.day + interval '1 day'
    and (i.valid_to is null or i.valid_to >= days.day + interval '1 day')
where i.counts or i.uncertain
group by days.day, i.currency_code
