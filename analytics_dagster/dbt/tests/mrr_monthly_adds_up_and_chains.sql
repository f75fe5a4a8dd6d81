{{ config(meta={'dagster': {'ref': {'name': 'mrr_monthly'}}}) }}
-- Each month of mrr_monthly, per currency: starts where the month before ended (0 when it has
-- no row: no MRR, no movement), starts and ends at mrr_daily's MRR of the day before its first
-- and of its last (or today), ends at its start plus its movements, whose total is the sum of
-- its five classes (to the floating point of mrr_daily's sums). The rows returned are the
-- months that do not, with what is off.
with months as (
    select
        m.*,
        cast(m.month - interval '1 day' as date) as start_day,
        least(cast(m.month + interval '1 month' - interval '1 day' as date), current_date) as end_day,
        cast(m.month - interval '1 month' as date) as previous_month
    from {{ ref('mrr_monthly') }} as m
),

checked as (
    select
        m.month,
        m.currency_code,
        m.starting_mrr,
        coalesce(p.ending_mrr, 0) as previous_ending_mrr,
        coalesce(s.mrr, 0) as mrr_daily_start,
        m.ending_mrr,
        coalesce(e.mrr, 0) as mrr_daily_end,
        m.net_movement,
        m.new_mrr + m.expansion_mrr + m.reactivation_mrr + m.contraction_mrr + m.churn_mrr as classes_total,
        abs(m.starting_mrr) + abs(m.ending_mrr) as scale
    from months as m
    left join {{ ref('mrr_monthly') }} as p on p.month = m.previous_month and p.currency_code = m.currency_code
    left join {{ ref('mrr_daily') }} as s on s.day = m.start_day and s.currency_code = m.currency_code
    left join {{ ref('mrr_daily') }} as e on e.day = m.end_day and e.currency_code = m.currency_code
)

select *
from checked
where starting_mrr <> previous_ending_mrr
    or starting_mrr <> mrr_daily_start
    or ending_mrr <> mrr_daily_end
    or abs(cast(starting_mrr as double precision) + cast(net_movement as double precision) - ending_mrr)
        >= 0.000001 + 0.000000000001 * scale
    or net_movement <> classes_total
