"""Three articles in the wikitext of real English Wikipedia pages (written for these tests, in their layout):
short description and infobox templates, ``<ref>`` citations (named, reused, self-closing, with templates
inside), ``{| class="wikitable"`` tables, ``[[File:...|thumb|...]]`` images with links in their captions,
bold and italic marks including the ``''Iliad'''s`` form that trips mwparserfromhell's style parser,
``<math>`` and ``<syntaxhighlight>`` blocks, and the appendix sections (See also, Notes, References,
Further reading, External links) that real articles end with.
"""

from __future__ import annotations

ILIAD = """{{Short description|Ancient Greek epic poem attributed to Homer}}
{{Other uses}}
{{Infobox poem
| name       = Iliad
| image      = [[File:Iliad papyrus.jpg|200px]]
| author     = [[Homer]]
| language   = [[Homeric Greek]]
| lines      = 15,693
}}
The '''''Iliad''''' ({{IPAc-en|ˈ|ɪ|l|i|ə|d}};<ref>{{cite dictionary |title=Iliad |dictionary=Collins}}</ref> \
{{lang-grc|Ἰλιάς|Iliás}}) is one of two major ancient Greek [[epic poetry|epic poems]] attributed to [[Homer]]. \
It is one of the oldest extant works of literature still widely read by modern audiences.<ref name="west">West, \
M. L. (2011). ''The Making of the Iliad''. Oxford University Press. p. 15.</ref> The ''Iliad'''s story covers a \
few weeks in the last year of the [[Trojan War]], and '''Achilles''' is its central figure.

[[File:Achilles and Hector.jpg|thumb|upright=1.2|left|[[Achilles]] drags the body of [[Hector]], as shown on a \
vase of the 5th century BC]]
The poem is written in [[dactylic hexameter]]. It was composed in an ''oral tradition'', and the written text \
may date from the 8th century BC.<ref name="west" /> Its language mixes several '''dialects''' of Greek.

== Synopsis ==
The poem begins with an invocation to the [[Muses|Muse]]. The quarrel between Agamemnon and Achilles leads \
Achilles to withdraw from the fighting, and the Greeks suffer heavy losses as a result.<ref>{{Cite book \
|last=Kirk |first=G. S. |title=The Iliad: A Commentary |year=1985}}</ref>

{| class="wikitable sortable"
|+ Books of the poem
! Book !! Main event
|-
| 1 || The quarrel of Achilles and Agamemnon
|-
| 22 || The death of Hector
|}

Only after the death of his friend Patroclus does Achilles return to battle, and he kills Hector outside \
the walls of Troy.<!-- keep this paragraph short -->

=== Themes ===
Fate, glory and the anger of Achilles run through the whole poem. Homer's ''Odyssey'' continues the story \
of one of its heroes.{{sfn|West|2011|p=47}}

== See also ==
* [[Odyssey]]
* [[Trojan War in popular culture]]

== Notes ==
{{notelist}}

== References ==
{{Reflist|30em}}
* {{cite book |last=West |first=M. L. |title=The Making of the Iliad |year=2011}}

== Further reading ==
* Kirk, G. S. ''The Songs of Homer''. Cambridge, 1962.

== External links ==
* {{Wikisource|Iliad}}
* [https://example.org/iliad The Iliad online]

{{Homer}}
[[Category:Epic poems]]
[[de:Ilias]]
"""

PYTHAGORAS = """{{Short description|Relation between the sides of a right triangle}}
{{Infobox mathematical statement
| name = Pythagorean theorem
| field = [[Euclidean geometry]]
}}
In mathematics, the '''Pythagorean theorem''' or '''Pythagoras' theorem''' is a fundamental relation in \
[[Euclidean geometry]] between the three sides of a [[right triangle]]. It states that the area of the square \
whose side is the [[hypotenuse]] is equal to the sum of the areas of the squares on the other two sides.\
<ref>{{cite book|last=Heath|title=The Thirteen Books of Euclid's Elements|year=1908}}</ref>

The theorem can be written as an equation relating the lengths of the sides ''a'', ''b'' and the \
hypotenuse ''c'':
:<math>a^2 + b^2 = c^2 .</math>

[[Image:Pythagorean.svg|thumb|The sum of the areas of the two squares on the legs equals the area of the \
square on the hypotenuse.]]

== History ==
The theorem is named after the Greek philosopher [[Pythagoras]], born around 570 BC. It was known to \
'''Babylonian''' mathematicians long before him, as a clay tablet shows.<ref name=plimpton/>

{| class="wikitable"
! a !! b !! c
|-
| 3 || 4 || 5
|-
| 5 || 12 || 13
|}

== Computation ==
A short program checks whether three whole numbers form such a triple:
<syntaxhighlight lang="python">
def is_triple(a, b, c):
    return a * a + b * b == c * c
</syntaxhighlight>
Such triples are called ''Pythagorean triples'', and there are infinitely many of them.

== See also ==
* [[Law of cosines]]

== References ==
<references>
<ref name=plimpton>Robson, Eleanor (2001). "Neither Sherlock Holmes nor Babylon". ''Historia \
Mathematica''.</ref>
</references>

[[Category:Theorems in geometry]]
"""

PYTHON = """{{Short description|General-purpose programming language}}
{{Use dmy dates|date=November 2021}}
{{Infobox programming language
| name = Python
| logo = [[File:Python-logo-notext.svg|121px]]
| paradigm = [[Multi-paradigm programming language|Multi-paradigm]]
| designer = [[Guido van Rossum]]
}}
'''Python''' is a [[high-level programming language|high-level]], [[general-purpose programming language]]. \
Its design philosophy emphasizes [[code readability]] with the use of [[off-side rule|significant \
indentation]].<ref>{{Cite web |title=General Python FAQ |url=https://docs.python.org/3/faq/general.html \
|access-date=2021-09-07}}</ref> Python is [[dynamic typing|dynamically typed]] and [[garbage collection \
(computer science)|garbage-collected]].

== History ==
Python was conceived in the late 1980s by '''Guido van Rossum''' at [[Centrum Wiskunde & Informatica]] in the \
[[Netherlands]] as a successor to the ''ABC'' programming language.<ref name="faq-created"/> Its first \
release, ''Python 0.9.0'', appeared in 1991.

[[File:Guido-portrait-2014-drc.jpg|thumb|upright|Guido van Rossum, the creator of Python, in 2014]]

== Syntax and semantics ==
Python uses whitespace indentation, rather than [[curly bracket]]s or keywords, to delimit [[block \
(programming)|blocks]]. The classic first program is:
<syntaxhighlight lang="python3">
print("Hello, world!")
</syntaxhighlight>

{| class="wikitable"
|+ Summary of Python 3's built-in types
! Type !! Mutability !! Description
|-
| <code>bool</code> || immutable || Boolean value
|-
| <code>list</code> || mutable || List, can contain mixed types
|}

== See also ==
{{Portal|Computer programming}}
* [[List of programming languages]]

== References ==
{{Reflist}}

== External links ==
{{Commons category|Python (programming language)}}
* {{Official website}}

[[Category:Programming languages]]
[[fr:Python (langage)]]
"""

ARTICLES = {"Iliad": ILIAD, "Pythagorean theorem": PYTHAGORAS, "Python (programming language)": PYTHON}

# What a plain-text reader of the rendered articles sees (a sample of each), and markup that must be gone.
EXPECTED_PROSE = {
    "Iliad": ["The Iliad (; ) is one of two major ancient Greek epic poems attributed to Homer.",
              "The Iliad's story covers a few weeks in the last year of the Trojan War, and Achilles is its central",
              "It was composed in an oral tradition", "Synopsis", "Themes", "Homer's Odyssey continues the story"],
    "Pythagorean theorem": ["In mathematics, the Pythagorean theorem or Pythagoras' theorem is a fundamental",
                            "the hypotenuse c:", "It was known to Babylonian mathematicians long before him",
                            "Such triples are called Pythagorean triples"],
    "Python (programming language)": ["Python is a high-level, general-purpose programming language.",
                                      "by Guido van Rossum at Centrum Wiskunde & Informatica in the Netherlands",
                                      "successor to the ABC programming language."],
}
LEFTOVER_MARKUP = ("<ref", "</ref", "{{", "}}", "{|", "|}", "|-", "[[", "]]", "File:", "Image:", "thumb",
                   "''", "<math", "<syntaxhighlight", "wikitable", "Category:", "cite ", "Cite ", "Reflist",
                   "<!--", "==")
APPENDIX_TEXT = ("See also", "References", "External links", "Further reading", "Notes", "Law of cosines",
                 "Trojan War in popular culture", "The Songs of Homer", "List of programming languages",
                 "The Iliad online", "Robson, Eleanor")
