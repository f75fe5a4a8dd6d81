-- One row per adjustment (a refund, credit or chargeback of a transaction), its totals as
-- numbers (minor units of currency_code).
with adjustments as (
    {{ raw_adjustments() }}
)

select
    id as adjustment_id,
    action,
    transaction_id,
    subscription_id,
    customer_id,
    currency_code,
    status,
    reason,
    cast(totals->>'subtotal' as bigint) as subtotal,
    cast(totals->>'tax' as bigint) as tax,
    cast(totals->>'total' as bigint) as total,
    cast(totals->>'fee' as bigint) as fee,
    cast(totals->>'earnings' as bigint) as earnings,
    created_at,
    updated_at
from adjustments
