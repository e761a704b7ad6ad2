"""A mix of strategies in fixed proportions (the research's intermediate budget band).

Items of the parts are interleaved by smooth weighted round robin, so any prefix of the plan holds
each part within one item of its fraction. The engine reads `budget_fractions()` to give each part
that share of every budget limit; items keep their part's name in `PlanItem.strategy`, which is
how the engine (and `run`) tell them apart. A part whose plan ended (`ended_parts()`) hands what
it left of its share to the others once its items are finished; a part found spent
(`share_spent`) may so get room again (`share_regained`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from synthledger.engine.api import Context, PlanItem, PluginOptions, Sample, Strategy


class MixPart(BaseModel):
    """One part: a strategy name, its fraction, and any other keys as that strategy's options."""

    model_config = ConfigDict(extra="allow")

    name: str
    fraction: float = Field(gt=0.0, le=1.0)

    @property
    def sub_options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _short_errors(exc: ValidationError) -> str:
    """One line per error, "key: message", without pydantic's "Value error, " noise."""
    lines = []
    for err in exc.errors():
        loc = ".".join(map(str, err["loc"])) or "(options)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(msg if msg.startswith(f"{loc}:") else f"{loc}: {msg}")
    return "; ".join(lines)


class Mix(Strategy):
    name: ClassVar[str] = "mix"
    roles: ClassVar[tuple[str, ...]] = ("teacher",)  # instances replace this with their parts' roles

    class Options(PluginOptions):
        parts: list[MixPart] = Field(min_length=1)
        _validated: list[tuple[type[Strategy], PluginOptions]] = PrivateAttr(default_factory=list)

        @model_validator(mode="after")
        def _check_parts(self) -> "Mix.Options":
            from synthledger.engine import host  # at validation time: the registry is loaded lazily

            total = sum(part.fraction for part in self.parts)
            if abs(total - 1.0) > 1e-6:
                shares = ", ".join(f"{p.name}={p.fraction:g}" for p in self.parts)
                raise ValueError(f"parts: fractions must sum to 1, got {total:g} ({shares})")
            seen: set[str] = set()
            validated = []
            for i, part in enumerate(self.parts):
                where = f"parts[{i}] ({part.name})"
                if part.name == "mix":
                    raise ValueError(f"{where}: a mix cannot contain a mix")
                if part.name in seen:
                    raise ValueError(f"{where}: strategy listed twice; give each strategy one part")
                seen.add(part.name)
                try:
                    cls = host.get("strategies", part.name)
                except host.UnknownPlugin as exc:
                    raise ValueError(f"{where}: {exc}") from None
                try:
                    options = cls.Options.model_validate(part.sub_options)
                except ValidationError as exc:
                    raise ValueError(f"{where}: {_short_errors(exc)}") from None
                validated.append((cls, options))
            self._validated = validated
            return self

    options: Options

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.parts: dict[str, Strategy] = {
            part.name: cls(options, self.seeds, self.task, self.random_seed)
            for part, (cls, options) in zip(self.options.parts, self.options._validated)
        }
        self._fractions = {part.name: part.fraction for part in self.options.parts}
        self._spent: set[str] = set()  # parts whose budget share the engine found spent
        self._ended: set[str] = set()  # parts whose own plan has ended
        roles: list[str] = []
        for sub in self.parts.values():
            roles += [r for r in sub.roles if r not in roles]
        self.roles = tuple(roles)

    def budget_fractions(self) -> dict[str, float]:
        return dict(self._fractions)

    def share_spent(self, name: str) -> None:
        """The engine says part `name` has spent its share: the plan yields no more of its items,
        so it ends once every part has ended or spent its share (a finite part that ended early
        and an endless one whose share is spent made a plan that never ended)."""
        self._spent.add(name)

    def share_regained(self, name: str) -> None:
        """The engine says part `name` has room again (a part that ended handed it its unspent
        share): the plan yields its items again, from where it stopped."""
        self._spent.discard(name)

    def ended_parts(self) -> set[str]:
        """The parts whose plan has ended: once their items are finished, the engine hands what
        they left of their share to the others."""
        return set(self._ended)

    def plan(self) -> Iterator[PlanItem]:
        plans = {name: iter(sub.plan()) for name, sub in self.parts.items()}
        credit = {name: 0.0 for name in plans}
        while True:
            going = [name for name in plans if name not in self._spent]  # a spent part may regain room
            if not going:
                return
            total = sum(self._fractions[name] for name in going)
            for name in going:
                credit[name] += self._fractions[name]
            name = max(going, key=lambda n: credit[n])  # first listed wins ties
            credit[name] -= total
            item = next(plans[name], None)
            if item is None:  # a finite part ended: the others share its turns from now on
                del plans[name]
                self._ended.add(name)
                continue
            yield item

    def _part(self, item: PlanItem) -> Strategy:
        try:
            return self.parts[item.strategy]
        except KeyError:
            raise KeyError(f"mix has no part {item.strategy!r} (parts: {', '.join(self.parts)})") from None

    def item_cost(self, item: PlanItem) -> dict[str, int]:
        return self._part(item).item_cost(item)

    async def run(self, item: PlanItem, ctx: Context) -> Sample | None:
        return await self._part(item).run(item, ctx)
