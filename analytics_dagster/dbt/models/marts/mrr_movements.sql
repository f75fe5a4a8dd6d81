-- What moved MRR: a row per day, currency and subscription whose MRR at the end of that day (UTC)
-- differs from its MRR at the end of the day before, classified (docs/models.md, "MRR movements"):
-- * new: from none to some, the subscription's first MRR;
-- * reactivation: from none to some, the subscription having had MRR on an earlier day (it came
--   back from a pause, a cancellation, past due);
-- * expansion / contraction: from some to more / less;
-- * churn: from some to none (canceled, paused, past due; its billed items all gone).
-- A subscription's MRR is mrr_daily's, subscription by subscription: the monthly amounts of its
-- items that count (counts_in_mrr) in its state at the end of the day, in its currency. So a day's
-- movements in a currency add up to that day's change of mrr_daily (a test: every day). A state
-- that changes nothing MRR depends on (a renewal, a new address) is no movement; changes within
-- one day net out (only the end of each day counts, as in mrr_daily). A subscription whose
-- currency changes churns in the old one and comes back (reactivation) in the new one.
--
-- Amounts are numeric to a billionth of a minor unit, each item's monthly amount rounded there
-- before it is summed: a subscription's MRR is then the same number whatever the order of its
-- items, so a state with the same items moves nothing (a float sum would move by 1e-12).
with history_items as (
    {{ subscription_items(ref('subscription_history'), 'subscription_id', ['state_id', 'status', 'valid_from', 'priced_at'],
                         as_of='priced_at') }}
),

state_mrr as (
    select
        state_id,
        coalesce(sum(cast(monthly_amount as numeric(38, 9))) filter (
            where {{ counts_in_mrr('status', 'recurring', 'item_status') }}), 0) as mrr
    from history_items
    group by state_id
),

-- each state with the days it is the subscription's state at the end of: [first_day, last_day]
-- (it starts before the end of first_day and lasts past the end of last_day); a state that
-- begins and ends within one day is the state at the end of no day, and moves nothing
states as (
    select
        h.subscription_id,
        h.customer_id,
        h.currency_code,
        cast(h.valid_from as date) as first_day,
        case when h.valid_to is null then current_date
             else cast(h.valid_to - interval '1 day' as date) end as last_day,
        coalesce(m.mrr, 0) as mrr
    from {{ ref('subscription_history') }} as h
    left join state_mrr as m on m.state_id = h.state_id
),

-- the states that end some day up to today, each with the one before it (the day before its
-- first day) and whether the subscription had MRR on any day before
sequenced as (
    select
        *,
        lag(mrr) over by_day as previous_mrr,
        lag(currency_code) over by_day as previous_currency,
        coalesce(max(case when mrr > 0 then 1 else 0 end) over (
            partition by subscription_id order by first_day rows between unbounded preceding and 1 preceding), 0) = 1
            as had_mrr
    from states
    where first_day <= last_day and first_day <= current_date
    window by_day as (partition by subscription_id order by first_day)
),

changes as (
    -- in the state's currency
    select
        first_day as day, currency_code, subscription_id, customer_id, had_mrr,
        case when previous_currency = currency_code then previous_mrr else 0 end as mrr_before,
        mrr as mrr_after
    from sequenced
    union all
    -- in the currency the subscription left (its currency changed that day)
    select first_day, previous_currency, subscription_id, customer_id, had_mrr, previous_mrr, 0
    from sequenced
    where previous_currency is not null and previous_currency <> currency_code
)

select
    day,
    currency_code,
    subscription_id,
    customer_id,
    case
        when mrr_before = 0 and had_mrr then 'reactivation'
        when mrr_before = 0 then 'new'
        when mrr_after = 0 then 'churn'
        when mrr_after > mrr_before then 'expansion'
        else 'contraction'
    end as movement,
    mrr_after - mrr_before as amount,
    mrr_before,
    mrr_after
from changes
where mrr_after <> mrr_before
