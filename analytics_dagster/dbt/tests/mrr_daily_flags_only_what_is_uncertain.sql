{{ config(meta={'dagster': {'ref': {'name': 'mrr_daily'}}}) }}
-- mrr_daily's flag holds together: a day-currency with no subscription in an uncertain state may
-- be off by nothing (uncertain_mrr 0) and is not flagged; a bound is never negative; one not
-- known (null) is flagged; flagged is never null. The rows returned are those that do not.
select day, currency_code, uncertain_subscriptions, uncertain_mrr, flagged
from {{ ref('mrr_daily') }}
where flagged is null
   or (uncertain_subscriptions = 0 and (uncertain_mrr is null or uncertain_mrr <> 0 or flagged))
   or uncertain_mrr < 0
   or (uncertain_mrr is null and not flagged)
