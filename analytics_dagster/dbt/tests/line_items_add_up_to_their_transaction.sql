{{ config(meta={'dagster': {'ref': {'name': 'stg_transaction_line_items'}}}) }}
-- Every transaction's subtotal, discount, tax and total are the sums of its lines'.
select t.transaction_id, t.subtotal, t.discount, t.tax, t.total,
    l.subtotal as lines_subtotal, l.discount as lines_discount, l.tax as lines_tax, l.total as lines_total
from {{ ref('stg_transactions') }} as t
join (
    select transaction_id, sum(subtotal) as subtotal, sum(discount) as discount, sum(tax) as tax, sum(total) as total
    from {{ ref('stg_transaction_line_items') }}
    group by 1
) as l on l.transaction_id = t.transaction_id
where t.subtotal is distinct from l.subtotal
    or t.discount is distinct from l.discount
    or t.tax is distinct from l.tax
    or t.total is distinct from l.total
