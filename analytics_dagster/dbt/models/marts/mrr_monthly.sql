-- MRR per month and currency, from the first month of mrr_daily to this one (to today): what it
-- started at (mrr_daily at the end of the month before), what moved it (mrr_movements, by
-- class: new, expansion, reactivation positive; contraction, churn negative), what it ended at
-- (mrr_daily at the end of the month's last day, or today), and net revenue retention: the MRR
-- at the month's end of the customers who had MRR in that currency at its start, over their MRR
-- at the start (docs/models.md, "MRR movements"). starting_mrr + net_movement = ending_mrr, and
-- each month starts where the one before ended (tests). A month and currency with no MRR and no
-- movement has no row.
with bounds as (
    select least(coalesce(d.first_day, m.first_day), coalesce(m.first_day, d.first_day)) as first_day
    from (select min(day) as first_day from {{ ref('mrr_daily') }}) as d
    cross join (select min(day) as first_day from {{ ref('mrr_movements') }}) as m
),

months as (
    select
        cast(g.m as date) as month,
        cast(g.m - interval '1 day' as date) as start_day,
        least(cast(g.m + interval '1 month' - interval '1 day' as date), current_date) as end_day
    from generate_series(
        cast(date_trunc('month', (select first_day from bounds)) as date),
        cast(date_trunc('month', current_date) as date),
        interval '1 month'
    ) as g(m)
),

currencies as (
    select currency_code from {{ ref('mrr_daily') }}
    union
    select currency_code from {{ ref('mrr_movements') }}
),

moved as (
    select
        cast(date_trunc('month', day) as date) as month,
        currency_code,
        sum(amount) filter (where movement = 'new') as new_mrr,
        sum(amount) filter (where movement = 'expansion') as expansion_mrr,
        sum(amount) filter (where movement = 'reactivation') as reactivation_mrr,
        sum(amount) filter (where movement = 'contraction') as contraction_mrr,
        sum(amount) filter (where movement = 'churn') as churn_mrr,
        sum(amount) as net_movement,
        count(*) as movements
    from {{ ref('mrr_movements') }}
    group by 1, 2
),

-- each subscription's MRR in a currency from the day of a movement until the day of its next
-- (exclusive)
spans as (
    select
        subscription_id,
        customer_id,
        currency_code,
        day as from_day,
        lead(day) over (partition by subscription_id, currency_code order by day) as to_day,
        mrr_after as mrr
    from {{ ref('mrr_movements') }}
),

-- the customers with MRR in the currency at the start of the month (the end of the day before)
present as (
    select distinct m.month, s.currency_code, s.customer_id
    from months as m
    join spans as s on s.from_day <= m.start_day and (s.to_day is null or s.to_day > m.start_day)
    where s.mrr > 0
),

-- their MRR at the end of the month (every subscription of theirs in that currency, those
-- started in the month included)
retained as (
    select p.month, p.currency_code, count(distinct p.customer_id) as customers_at_start,
        coalesce(sum(s.mrr), 0) as retained_mrr
    from present as p
    join months as m on m.month = p.month
    left join spans as s
        on s.customer_id = p.customer_id and s.currency_code = p.currency_code
        and s.from_day <= m.end_day and (s.to_day is null or s.to_day > m.end_day)
    group by 1, 2
),

monthly as (
    select
        m.month,
        c.currency_code,
        coalesce(start_mrr.mrr, 0) as starting_mrr,
        coalesce(mv.new_mrr, 0) as new_mrr,
        coalesce(mv.expansion_mrr, 0) as expansion_mrr,
        coalesce(mv.reactivation_mrr, 0) as reactivation_mrr,
        coalesce(mv.contraction_mrr, 0) as contraction_mrr,
        coalesce(mv.churn_mrr, 0) as churn_mrr,
        coalesce(mv.net_movement, 0) as net_movement,
        coalesce(mv.movements, 0) as movements,
        coalesce(end_mrr.mrr, 0) as ending_mrr,
        coalesce(r.customers_at_start, 0) as customers_at_start,
        coalesce(r.retained_mrr, 0) as retained_mrr
    from months as m
    cross join currencies as c
    left join {{ ref('mrr_daily') }} as start_mrr on start_mrr.day = m.start_day and start_mrr.currency_code = c.currency_code
    left join {{ ref('mrr_daily') }} as end_mrr on end_mrr.day = m.end_day and end_mrr.currency_code = c.currency_code
    left join moved as mv on mv.month = m.month and mv.currency_code = c.currency_code
    left join retained as r on r.month = m.month and r.currency_code = c.currency_code
)

select
    *,
    -- null when the month started with no MRR
    cast(retained_mrr as double precision) / nullif(starting_mrr, 0) as net_revenue_retention
from monthly
where starting_mrr <> 0 or ending_mrr <> 0 or movements > 0
