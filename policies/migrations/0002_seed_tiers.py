from django.db import migrations

TIERS = [
    ("free", "Free", 0, "Default tier for new organizations."),
    ("standard", "Standard", 5, ""),
    ("premium", "Premium", 10, "Served first when requests queue."),
]


def seed(apps, schema_editor):
    Tier = apps.get_model("policies", "Tier")
    for slug, name, priority, description in TIERS:
        Tier.objects.get_or_create(
            slug=slug, defaults={"name": name, "priority": priority, "description": description}
        )


class Migration(migrations.Migration):
    dependencies = [("policies", "0001_initial")]
    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
