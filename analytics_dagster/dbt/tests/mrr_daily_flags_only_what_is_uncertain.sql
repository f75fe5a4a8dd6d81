{{ config(meta={'dagster': {'ref': {'name': 'mrr_daily'}}}) }}
-- mrr_daily's flags hold together: a day-currency with no subscription in an uncertain state may
-- be off by nothing (uncertain_mrr 0) and is not flagged; a bound is never negative; one not
-- known (null) is flagged; flagged is never null. The same of assumption_mrr and
-- flagged_unless_defaults, counting the subscriptions assuming Paddle's defaults too; and that
-- bound is never below uncertain_mrr (it widens it), so a day flagged is flagged unless defaults.
-- The rows returned are those that do not.
select day, currency_code, uncertain_subscriptions, uncertain_mrr, flagged, assuming_subscriptions, assumption_mrr,
    flagged_unless_defaults
from {{ ref('mrr_daily') }}
where flagged is null
   or (uncertain_subscriptions = 0 and (uncertain_mrr is null or uncertain_mrr <> 0 or flagged))
   or uncertain_mrr < 0
   or (uncertain_mrr is null and not flagged)
   or flagged_unless_defaults is null
   or (uncertain_subscriptions = 0 and assuming_subscriptions = 0
       and (assumption_mrr is null or assumption_mrr <> 0 or flagged_unless_defaults))
   or (assumption_mrr is null and not flagged_unless_defaults)
   or (uncertain_mrr is null and assumption_mrr is not null)
   or assumption_mrr < uncertain_mrr * (1 - 1e-9)  -- (sums of floating point, in any order)
   or (flagged and not flagged_unless_defaults)
