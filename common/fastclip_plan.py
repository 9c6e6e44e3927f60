from dataclasses import dataclass
@dataclass(frozen=True)
class Choice:
    method: str
def choose_conv(T, d, p, b):
    return Choice("ghost" if 2 * T * T <= p * d else "instantiate")
