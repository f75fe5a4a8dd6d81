-- Revenue per month, currency and product: what billed, paid and completed transactions billed
-- (their lines' subtotal less discount, before tax; the month the transaction was billed, or
-- created when it has no billed_at), less approved refunds and credits (their items' subtotal,
-- before tax; the month the adjustment was made): gross, refunds, net.
with billed as (
    select
        cast(date_trunc('month', coalesce(t.billed_at, t.created_at)) as date) as month,
        l.currency_code,
        l.product_id,
        sum(l.subtotal - l.discount) as gross
    from {{ ref('stg_transaction_line_items') }} as l
    join {{ ref('stg_transactions') }} as t on t.transaction_id = l.transaction_id
    where t.status in ('billed', 'paid', 'completed')
    group by 1, 2, 3
),

adjusted as (
    select
        cast(date_trunc('month', a.created_at) as date) as month,
        a.currency_code,
        l.product_id,
        sum(i.subtotal) as refunds
    from {{ ref('stg_adjustment_items') }} as i
    join {{ ref('stg_adjustments') }} as a on a.adjustment_id = i.adjustment_id
    left join {{ ref('stg_transaction_line_items') }} as l on l.line_item_id = i.line_item_id
    where a.status = 'approved' and a.action in ('refund', 'credit')
    group by 1, 2, 3
)

select
    coalesce(b.month, a.month) as month,
    coalesce(b.currency_code, a.currency_code) as currency_code,
    coalesce(b.product_id, a.product_id) as product_id,
    coalesce(b.gross, 0) as gross,
    coalesce(a.refunds, 0) as refunds,
    coalesce(b.gross, 0) - coalesce(a.refunds, 0) as net
from billed as b
full outer join adjusted as a
    on a.month = b.month and a.currency_code = b.currency_code and a.product_id = b.product_id
