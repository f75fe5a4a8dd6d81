{{ config(meta={'dagster': {'ref': {'name': 'mrr_daily'}}}) }}
-- The newest day of mrr_daily (today when it was built: a test run just after midnight UTC
-- reads the day before), per currency, is the MRR of the subscriptions as listed now
-- (stg_subscription_items: billed recurring items of active subscriptions), to a hundredth of
-- a minor unit.
with listed as (
    select unit_currency_code as currency_code, sum(monthly_amount) as mrr
    from {{ ref('stg_subscription_items') }}
    where subscription_status = 'active' and recurring and {{ billed_item('item_status') }}
    group by 1
),

today as (
    select currency_code, mrr from {{ ref('mrr_daily') }} where day = (select max(day) from {{ ref('mrr_daily') }})
)

select coalesce(listed.currency_code, today.currency_code) as currency_code, listed.mrr as listed_mrr, today.mrr as mrr_daily_mrr
from listed
full outer join today on today.currency_code = listed.currency_code
where abs(coalesce(listed.mrr, 0) - coalesce(today.mrr, 0)) >= 0.01
