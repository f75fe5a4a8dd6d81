{#- No two rows share the values of `columns` (a key of several columns). -#}
{% test unique_combination(model, columns) %}
select {{ columns | join(', ') }}, count(*) as rows_with_them
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1
{% endtest %}
