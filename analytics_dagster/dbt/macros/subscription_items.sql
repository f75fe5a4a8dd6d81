{#- A month of a recurring price, in minor units: unit amount x quantity normalised to a month
    by its billing cycle (day x 365/12, week x 52/12, month / frequency, year / 12; each over
    the cycle's frequency), before tax and discount. `double precision`: DuckDB's `double`,
    and PostgreSQL's name of it. -#}
{% macro monthly_amount(unit_amount, quantity, interval, frequency) -%}
    (cast({{ unit_amount }} as double precision) * {{ quantity }}
        * case {{ interval }}
            when 'day' then 365.0 / 12
            when 'week' then 52.0 / 12
            when 'month' then 1.0
            when 'year' then 1.0 / 12
          end
        / {{ frequency }})
{%- endmacro %}

{#- One row per item (`items[]`) of each row of `relation` (subscriptions, or states of them):
    the item's price, product, quantity, whether it recurs, the price's billing cycle and unit
    amount, and its monthly amount (`monthly_amount`, null for an item that does not recur).
    `columns`: columns of `relation` carried along, as they are named there. -#}
{% macro subscription_items(relation, id_column, columns, items_column='items') -%}
select
    s.{{ id_column }} as subscription_id,
    {%- for column in columns %}

    s.{{ column }},
    {%- endfor %}
    item.value->'price'->>'id' as price_id,
    item.value->'price'->>'product_id' as product_id,
    item.value->>'status' as item_status,
    cast(item.value->>'quantity' as bigint) as quantity,
    cast(item.value->>'recurring' as boolean) as recurring,
    item.value->'price'->'billing_cycle'->>'interval' as billing_interval,
    cast(item.value->'price'->'billing_cycle'->>'frequency' as bigint) as billing_frequency,
    {{ amount("item.value->'price'->'unit_price'->>'amount'") }} as unit_amount,
    item.value->'price'->'unit_price'->>'currency_code' as unit_currency_code,
    case when cast(item.value->>'recurring' as boolean) then {{ monthly_amount(
        amount("item.value->'price'->'unit_price'->>'amount'"),
        "cast(item.value->>'quantity' as bigint)",
        "item.value->'price'->'billing_cycle'->>'interval'",
        "cast(item.value->'price'->'billing_cycle'->>'frequency' as bigint)") }} end as monthly_amount
from {{ relation }} as s,
    {{ json_array_elements('s.' ~ items_column, none, 'item') }}
{%- endmacro %}

{#- Whether an item of a subscription is billed: its status `active` (Paddle's item statuses:
    `trialing` is not billed yet, `inactive` no longer; an item without one counts as active). -#}
{% macro billed_item(status) -%}
    coalesce({{ status }}, 'active') = 'active'
{%- endmacro %}

{#- An amount of the API (a string of digits, in minor units) as a number: numeric(38, 0), not
    bigint, as the API's amounts are strings with no bound (one beyond 2^63 would fail a cast to
    bigint and with it the whole build). -#}
{% macro amount(text) -%}
    cast({{ text }} as numeric(38, 0))
{%- endmacro %}
