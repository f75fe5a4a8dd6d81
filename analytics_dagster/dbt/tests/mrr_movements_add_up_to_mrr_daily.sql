{{ config(meta={'dagster': {'ref': {'name': 'mrr_movements'}}}) }}
-- On every day from the first of mrr_daily (or of the movements) to today, in every currency,
-- the day's movements add up to the day's change of mrr_daily (its MRR less the day before's; a
-- day with no row is 0): exactly, but for the floating point of mrr_daily's sums (a millionth
-- of a minor unit, and a trillionth of the amounts). The rows returned are the days that do not.
with bounds as (
    select least(coalesce(d.first_day, m.first_day), coalesce(m.first_day, d.first_day)) as first_day
    from (select min(day) as first_day from {{ ref('mrr_daily') }}) as d
    cross join (select min(day) as first_day from {{ ref('mrr_movements') }}) as m
),

days as (
    select cast(g.d as date) as day
    from generate_series((select first_day from bounds), current_date, interval '1 day') as g(d)
),

currencies as (
    select currency_code from {{ ref('mrr_daily') }}
    union
    select currency_code from {{ ref('mrr_movements') }}
),

moved as (
    select day, currency_code, sum(amount) as amount, count(*) as movements
    from {{ ref('mrr_movements') }}
    group by 1, 2
),

compared as (
    select
        days.day,
        c.currency_code,
        coalesce(today.mrr, 0) as mrr,
        coalesce(yesterday.mrr, 0) as mrr_the_day_before,
        coalesce(today.mrr, 0) - coalesce(yesterday.mrr, 0) as change,
        coalesce(moved.amount, 0) as movements_total,
        coalesce(moved.movements, 0) as movements
    from days
    cross join currencies as c
    left join {{ ref('mrr_daily') }} as today on today.day = days.day and today.currency_code = c.currency_code
    left join {{ ref('mrr_daily') }} as yesterday
        on yesterday.day = cast(days.day - interval '1 day' as date) and yesterday.currency_code = c.currency_code
    left join moved on moved.day = days.day and moved.currency_code = c.currency_code
)

select *
from compared
where abs(cast(change as double precision) - cast(movements_total as double precision))
    >= 0.000001 + 0.000000000001 * (abs(mrr) + abs(mrr_the_day_before))
