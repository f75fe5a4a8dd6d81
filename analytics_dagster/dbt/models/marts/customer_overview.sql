-- Per customer and currency it was billed in: when it first paid in it, its lifetime net revenue in
-- that currency (billed, paid and completed transactions' subtotal less discount, less
-- approved refunds and credits), and its subscriptions active now. A customer never billed
-- has one row, with no currency and 0.
with net as (
    select customer_id, currency_code, sum(amount) as lifetime_net_revenue
    from (
        select customer_id, currency_code, subtotal - discount as amount
        from {{ ref('stg_transactions') }}
        where status in ('billed', 'paid', 'completed')
        union all
        select customer_id, currency_code, -subtotal as amount
        from {{ ref('stg_adjustments') }}
        where status = 'approved' and action in ('refund', 'credit')
    ) as amounts
    group by 1, 2
),

paid as (
    select customer_id, currency_code, min(coalesce(billed_at, created_at)) as first_paid_at
    from {{ ref('stg_transactions') }}
    where status in ('paid', 'completed')
    group by 1, 2
),

subscriptions as (
    select
        customer_id,
        count(*) filter (where status = 'active') as active_subscriptions,
        count(*) as subscriptions
    from {{ raw('subscriptions') }}
    group by 1
)

select
    c.id as customer_id,
    c.email,
    c.status as customer_status,
    net.currency_code,
    coalesce(net.lifetime_net_revenue, 0) as lifetime_net_revenue,
    paid.first_paid_at,
    cast(paid.first_paid_at as date) as first_paid_date,
    coalesce(s.active_subscriptions, 0) as active_subscriptions,
    coalesce(s.subscriptions, 0) as subscriptions
from {{ raw('customers') }} as c
left join net on net.customer_id = c.id
left join paid on paid.customer_id = c.id and paid.currency_code = net.currency_code
left join subscriptions as s on s.customer_id = c.id
