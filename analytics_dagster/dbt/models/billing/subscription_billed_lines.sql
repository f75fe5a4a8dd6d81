-- Every line of a subscription's own transactions that billed one of its prices for a whole
-- billing period, in a currency (docs/models.md, "Where an amount comes from"), and for when it
-- stands: from its transaction's billed_at (the first one: from always) to the next such line's
-- (the newest: null, and subscription_billed_prices). A state of the subscription is billed
-- what the line standing at its start (its priced_at: an inferred period's, when its own
-- transaction billed) billed: a converted price's past days take the exchange
-- rate of their own period, not the newest renewal's.
-- The transactions read: those of a subscription (subscription_id), made by its checkout (origin
-- web; a subscription sold on an invoice: the API's transaction that created it, api) or a renewal (subscription_recurring), billed (billed, paid, completed or past_due; or
-- billed, then canceled: an invoice no longer due, for a period the subscription had); a
-- prorated line (a change within a period) bills part of a period, and is left out.
with lines as (
    select
        t.subscription_id,
        l.price_id,
        l.currency_code,
        l.transaction_id,
        l.line_item_id,
        coalesce(t.billed_at, t.created_at) as billed_at,
        l.unit_subtotal,
        l.tax_rate,
        row_number() over (
            partition by t.subscription_id, l.price_id, l.currency_code
            order by coalesce(t.billed_at, t.created_at) desc, t.created_at desc, {{ byte_order('l.transaction_id') }} desc,
                {{ byte_order('l.line_item_id') }} desc
        ) as newest
    from {{ ref('stg_transaction_line_items') }} as l
    join {{ ref('stg_transactions') }} as t on t.transaction_id = l.transaction_id
    where t.subscription_id is not null
      and t.origin in ('web', 'api', 'subscription_recurring')
      and (t.status in ('billed', 'paid', 'completed', 'past_due') or (t.status = 'canceled' and t.billed_at is not null))
      and not l.prorated
      and l.price_id is not null
      and l.unit_subtotal is not null
)

select
    line_item_id,
    subscription_id,
    price_id,
    currency_code,
    unit_subtotal,
    tax_rate,
    transaction_id,
    billed_at,
    newest,
    case when lead(newest) over w is not null then billed_at end as billed_from,
    lag(billed_at) over w as billed_to
from lines
window w as (partition by subscription_id, price_id, currency_code order by newest)
