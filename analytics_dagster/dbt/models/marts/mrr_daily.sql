-- MRR per day and currency: the monthly amounts (monthly_amount) of the recurring, active items
-- (not trialing, not inactive: Paddle bills neither) of the subscriptions active at the end of
-- the day (UTC), in the subscription's currency, tax excluded, before discounts (where each
-- amount comes from: subscription_items, docs/models.md), from the first day of the history to
-- today. An item whose amount is unknown adds nothing, and is counted in unknown_items.
with history_items as (
    {{ subscription_items(ref('subscription_history'), 'subscription_id', ['status', 'valid_from', 'valid_to']) }}
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
    coalesce(sum(i.monthly_amount), 0) as mrr,
    count(distinct i.subscription_id) as active_subscriptions,
    count(*) filter (where i.amount_source = 'unknown') as unknown_items
from days
join history_items as i
    on i.valid_from < days.day + interval '1 day'
    and (i.valid_to is null or i.valid_to >= days.day + interval '1 day')
where {{ counts_in_mrr('i.status', 'i.recurring', 'i.item_status') }}
group by days.day, i.currency_code
