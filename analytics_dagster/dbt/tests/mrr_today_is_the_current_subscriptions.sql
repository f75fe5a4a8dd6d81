{{ config(meta={'dagster': {'ref': {'name': 'mrr_daily'}}}, severity='warn') }}
-- Today's MRR in mrr_daily, per currency, is the MRR of the subscriptions as listed now
-- (stg_subscription_items: billed recurring items of active subscriptions), to a hundredth of
-- a minor unit (and a billionth of the amount: sums of large amounts in floating point).
-- "Today" is the build's: today's rows, or yesterday's for a test that runs just after
-- midnight UTC; a currency is off when it matches neither.
-- A warning, not an error: the subscriptions table and the event stream can disagree for a
-- while, by the contract (a late event; one table synced alone), and that blocks nothing.
with listed as (
    select currency_code, coalesce(sum(monthly_amount), 0) as mrr
    from {{ ref('stg_subscription_items') }}
    where {{ counts_in_mrr('subscription_status', 'recurring', 'item_status') }}
    group by 1
),

days as (
    select current_date as day
    union all
    select cast(current_date - interval '1 day' as date)
),

currencies as (
    select currency_code from listed
    union
    select m.currency_code from {{ ref('mrr_daily') }} as m join days on days.day = m.day
),

compared as (
    select
        c.currency_code,
        coalesce(l.mrr, 0) as listed_mrr,
        coalesce(m.mrr, 0) as mrr_daily_mrr
    from currencies as c
    cross join days
    left join listed as l on l.currency_code = c.currency_code
    left join {{ ref('mrr_daily') }} as m on m.day = days.day and m.currency_code = c.currency_code
)

select currency_code, max(listed_mrr) as listed_mrr, max(mrr_daily_mrr) as mrr_daily_mrr
from compared
group by currency_code
having not bool_or(abs(listed_mrr - mrr_daily_mrr) < 0.01 + 1e-9 * abs(listed_mrr))
